"""The on-disk dataset layout shared with the old am-segmentation tool (seed spec section 2).

DS_PATH/source/<group>/<image>                 raw microscopy image (user)
DS_PATH/source_norm/<group>/source.tiff        normalized, 8-bit
DS_PATH/tiles/<group>/meta.json                tile geometry
DS_PATH/tiles/<group>/{source,mask}/NNNN.png   tiles and per-tile masks
DS_PATH/tiles_stitched/<group>/mask.tiff       stitched binary mask (0/255)
DS_PATH/am_coords/<group>/am_coordinates.png   uint16 ids on the acquisition grid
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.errors import DatasetError

SOURCE_PATTERNS = ("*.tif", "*.tiff", "*.TIF", "*.TIFF", "*.png", "*.PNG", "*.jpg", "*.jpeg")


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset directory."""

    root: Path

    def source_dir(self, group: str) -> Path:
        return self.root / "source" / group

    def source_norm_dir(self, group: str) -> Path:
        return self.root / "source_norm" / group

    def tiles_dir(self, group: str) -> Path:
        return self.root / "tiles" / group

    def stitched_dir(self, group: str) -> Path:
        return self.root / "tiles_stitched" / group

    def am_coords_dir(self, group: str) -> Path:
        return self.root / "am_coords" / group

    def groups(self) -> list[str]:
        """Group names: the sub-folders of source/ (plain files there are ignored)."""
        source = self.root / "source"
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset directory")
        if not source.is_dir():
            raise DatasetError(
                f"{self.root}: no source/ folder; put each image in source/<group>/ "
                "(e.g. source/well1/image.tiff)"
            )
        return sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))

    def select_groups(self, requested: list[str] | None) -> list[str]:
        """The requested groups (checked to exist), or all groups when none are named."""
        available = self.groups()
        if not requested:
            if not available:
                raise DatasetError(f"{self.root / 'source'}: no group folders found")
            return available
        unknown = [g for g in requested if g not in available]
        if unknown:
            raise DatasetError(
                f"{self.root}: unknown group(s) {', '.join(unknown)}; "
                f"available: {', '.join(available) or 'none'}"
            )
        return list(requested)

    def source_image(self, group: str) -> Path:
        """The group's image: the first TIFF, else PNG, else JPEG file in source/<group>/."""
        folder = self.source_dir(group)
        for pattern in SOURCE_PATTERNS:
            matches = sorted(p for p in folder.glob(pattern) if p.is_file())
            if matches:
                return matches[0]
        raise DatasetError(f"{folder}: no TIFF, PNG or JPEG image found")
