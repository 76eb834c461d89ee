"""Launch-size helpers shared by the Triton kernels."""
import functools

import torch


@functools.lru_cache(maxsize=None)
def num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device, waves: int) -> int:
    """Programs worth launching: ``waves`` per SM on a GPU; few under the (serial) interpreter."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return waves * num_sms(index)
    return 4
