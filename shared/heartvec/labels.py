"""Label tables: which label value in a volume means which heart class.

The classes are fixed by the model (index 1..C, 0 is background); a label table maps the label
values found in a user's volumes onto them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from heartvec.errors import LabelTableError

CLASS_NAMES: tuple[str, ...] = (
    "left_ventricle",
    "lv_myocardium",
    "right_ventricle",
    "left_atrium",
    "right_atrium",
    "aorta",
    "pulmonary_artery",
    "superior_vena_cava",
    "inferior_vena_cava",
    "pulmonary_veins",
)
"""Class names in class-index order: class i (1-based) is CLASS_NAMES[i - 1]."""

LARGE_CLASSES: tuple[str, ...] = CLASS_NAMES[:7]
"""The chambers, the myocardium and the two great arteries (the others are thin veins)."""

# MM-WHS structures; `mmwhs` numbers them 1..7 in this order, `mmwhs-raw` uses the raw codes.
_MMWHS_ORDER = (
    "lv_myocardium",
    "left_atrium",
    "left_ventricle",
    "right_atrium",
    "right_ventricle",
    "aorta",
    "pulmonary_artery",
)
_MMWHS_RAW_CODES = (205, 420, 500, 550, 600, 820, 850)


@dataclass(frozen=True)
class LabelTable:
    """A mapping from label values to class indices.

    Args:
        name: the built-in name or the file it was read from.
        class_of_value: label value -> class index (1..C).
        class_names: the model's classes, index i at position i - 1.
    """

    name: str
    class_of_value: dict[int, int]
    class_names: tuple[str, ...] = CLASS_NAMES

    @property
    def num_classes(self) -> int:
        """C, the number of classes of the model (not only those this table uses)."""
        return len(self.class_names)

    def class_name(self, class_index: int) -> str:
        """The name of class `class_index` (1..C)."""
        return self.class_names[class_index - 1]

    def value_of_class(self, class_index: int) -> int:
        """The label value this table uses for `class_index` (the first one, if several)."""
        for value, index in sorted(self.class_of_value.items()):
            if index == class_index:
                return value
        raise KeyError(f"class {class_index} ({self.class_name(class_index)}) has no label value")

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready description: label value -> class name."""
        return {
            "name": self.name,
            "classes": {str(v): self.class_name(c) for v, c in sorted(self.class_of_value.items())},
        }


def _by_names(name: str, values: tuple[int, ...], names: tuple[str, ...]) -> LabelTable:
    return LabelTable(
        name, {v: CLASS_NAMES.index(n) + 1 for v, n in zip(values, names, strict=True)}
    )


BUILTIN_TABLES: dict[str, LabelTable] = {
    "default": LabelTable("default", {i + 1: i + 1 for i in range(len(CLASS_NAMES))}),
    "mmwhs": _by_names("mmwhs", tuple(range(1, 8)), _MMWHS_ORDER),
    "mmwhs-raw": _by_names("mmwhs-raw", _MMWHS_RAW_CODES, _MMWHS_ORDER),
}


def load_label_table(name_or_file: str) -> LabelTable:
    """A built-in table by name (`default`, `mmwhs`, `mmwhs-raw`) or a JSON/YAML file.

    The file maps label values to class names, e.g. `{"1": "lv_myocardium", "2": "left_atrium"}`;
    a top-level `classes:` key holding that mapping is accepted too.

    Raises:
        LabelTableError: unknown name, unreadable file, unknown class name, bad label value.
    """
    if name_or_file in BUILTIN_TABLES:
        return BUILTIN_TABLES[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise LabelTableError(
            name_or_file,
            f"not a label table: expected one of {sorted(BUILTIN_TABLES)} or a JSON/YAML file",
        )
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise LabelTableError(path, f"cannot read label table: {e}") from e
    if isinstance(raw, dict) and isinstance(raw.get("classes"), dict):
        raw = raw["classes"]
    if not isinstance(raw, dict) or not raw:
        raise LabelTableError(path, "expected a mapping of label value -> class name")
    class_of_value: dict[int, int] = {}
    for value, class_name in raw.items():
        try:
            label_value = int(value)
        except (TypeError, ValueError) as e:
            raise LabelTableError(path, f"label value {value!r} is not an integer") from e
        if label_value == 0:
            raise LabelTableError(path, "label value 0 is background and cannot name a class")
        if class_name not in CLASS_NAMES:
            raise LabelTableError(
                path,
                f"unknown class {class_name!r} for value {value}: expected one of {CLASS_NAMES}",
            )
        class_of_value[label_value] = CLASS_NAMES.index(class_name) + 1
    return LabelTable(str(path), class_of_value)
