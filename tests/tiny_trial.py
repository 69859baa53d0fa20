"""The tiny trial every trainer test shares (a module of its own: `conftest` names two files here)."""

# A trial small enough for 2 CPU cores in seconds: 64 px images, 4 classes, 24 train / 8 val images.
TINY_TRIAL = [
    "data.synth.train_images=24",
    "data.synth.val_images=8",
    "data.synth.image_size=64",
    "data.synth.classes=4",
    "data.synth.max_objects=3",
    "input.image_size=64",
    "backbone.weights=none",
    "train.epochs=2",
    "train.batch_size=8",
    "optim.warmup_steps=2",
    "eval.rare_max=4",
    "eval.common_max=12",
]
