"""What differs on the platforms users try the toolkit on besides Linux: case-insensitive file
systems (macOS' and Windows' default) in export's class folders; a build without OpenMP
(Apple's clang) in `infer-fast info`."""
import dataclasses
import unicodedata

import pytest
from conftest import small_infer_set

from infer_fast.storage import DistilledSetError, export_imagefolder

CLASSES = [f"class_{i}" for i in range(10)]


@pytest.mark.parametrize("clash", [("Cat", "cat"), ("caf\u00e9", unicodedata.normalize("NFD", "CAF\u00c9"))])
def test_export_by_name_refuses_names_one_folder_on_a_case_insensitive_file_system(tmp_path, clash):
    ds = dataclasses.replace(small_infer_set(), class_names=[*clash, *CLASSES[2:]])
    with pytest.raises(DistilledSetError, match="not unique as folder names .*ignoring case.*use naming='index'"):
        export_imagefolder(ds, tmp_path / "out", naming="name")
    assert not (tmp_path / "out").exists()  # refused before any folder is made


def test_export_by_name_keeps_names_that_differ_beyond_case(tmp_path):
    ds = dataclasses.replace(small_infer_set(), class_names=["Cat", "Cats", *CLASSES[2:]])
    assert export_imagefolder(ds, tmp_path / "out", naming="name") == ds.num_training_images()
    assert (tmp_path / "out" / "Cat").is_dir() and (tmp_path / "out" / "Cats").is_dir()


def test_info_says_a_build_without_openmp(monkeypatch):
    import infer_fast.info as info

    monkeypatch.setattr(info, "build_info", lambda: {"cuda_kernels": False, "cuda_reason": "a CPU-only build",
                                                     "openmp": False, "openmp_reason": "clang++ refuses -fopenmp"})
    ext_line = next(line for line in info.format_info().splitlines() if line.strip().startswith("C++ ext"))
    assert ext_line.endswith("loaded (built without OpenMP, one thread: clang++ refuses -fopenmp)")
