"""The names a user chooses among, each list defined once under a name that says which it is.
Kept free of heavy imports: the command line builds its parser's choices from here."""

ACCOUNTINGS = ("fair", "ipc")  # INFER budget accounting: K = floor(ipc*C/(C+M)), or K = ipc
SELECTIONS = ("random", "confidence")  # how INFER's natural images are picked
RECOVERY_AUGMENTATIONS = ("roll", "imagenet")
# how a crop-scale curriculum (CDA) moves RandomResizedCrop's lower bound: held at its start, or
# falling linearly or along a half cosine, until the milestone
CROP_SCALE_SCHEDULES = ("step", "linear", "cosine")
PRECISIONS = ("fp32", "bf16")
DISTRIBUTED_MODES = ("jobs", "chunks")
# torch.compile modes for the teacher pass of recovery ("reduce-overhead" adds CUDA graphs)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"  # what a device option takes (teacher.resolve_device)
STUDENT_AUGMENTATIONS = ("crop_flip", "resized_crop_flip", "shuffle_patches_crop_flip", "none")
STUDENT_MIXES = ("mixup", "cutmix", "none")
# the student's learning-rate schedule: ours (cosine to 0 over the steps) or DD-Ranking's "cosine"
# (per epoch, 0.5 (1 + cos(pi e / 2E)): from the rate down to half of it)
STUDENT_SCHEDULES = ("cosine", "half-cosine")
# where a student's batches are augmented and mixed: on the host's CPU, or on the training device
AUGMENTATION_PLACES = ("host", "device")
STUDENT_LABELS = ("soft", "hard")  # the set's soft labels (KL, temperature) or its hard labels (cross-entropy)
EVALUATION_PROTOCOLS = ("infer-fast", "dd-ranking")  # `infer-fast evaluate --protocol`: ours, or DD-Ranking's
SOFT_LABEL_MODES = ("static", "per-batch")  # students learn the set's stored labels, or the teachers' on every batch
# `infer-fast export`'s class folders: zero-padded class indices (the default) or class names made
# safe as folder names (`T-shirt/top` -> `T-shirt_top`; `import` reads all three)
EXPORT_NAMINGS = ("index", "name")
