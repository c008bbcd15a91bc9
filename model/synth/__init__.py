"""Synthetic post-MALDI microscopy slides with exact ground truth, for training and benchmarks.

spec (SlideSpec) → styles (random_spec) → grid, outlines, labels (the truth) → background,
marks, debris, camera (the image) → slide (generate_slide) → writers (the files).
"""
