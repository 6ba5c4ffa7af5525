"""Label tables: the built-ins of CONTRACT.md, user files, and clear errors for bad ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from heartvec.errors import LabelTableError
from heartvec.labels import CLASS_NAMES, load_label_table

CLI = Callable[..., tuple[int, str, str]]


def test_default_table_is_identity_over_ten_classes() -> None:
    table = load_label_table("default")
    assert table.num_classes == 10
    assert table.class_of_value == {i: i for i in range(1, 11)}
    assert table.class_name(1) == "left_ventricle" and table.class_name(10) == "pulmonary_veins"


def test_mmwhs_tables_share_meaning() -> None:
    mmwhs, raw = load_label_table("mmwhs"), load_label_table("mmwhs-raw")
    names = [mmwhs.class_name(mmwhs.class_of_value[v]) for v in range(1, 8)]
    assert names == [
        "lv_myocardium", "left_atrium", "left_ventricle", "right_atrium",
        "right_ventricle", "aorta", "pulmonary_artery",
    ]  # fmt: skip
    raw_names = [raw.class_name(raw.class_of_value[v]) for v in (205, 420, 500, 550, 600, 820, 850)]
    assert raw_names == names
    assert mmwhs.value_of_class(1) == 3 and raw.value_of_class(1) == 500


def test_json_and_yaml_files(tmp_path: Path) -> None:
    json_file = tmp_path / "table.json"
    json_file.write_text(json.dumps({"11": "aorta", "12": "left_ventricle"}))
    yaml_file = tmp_path / "table.yaml"
    yaml_file.write_text("classes:\n  11: aorta\n  12: left_ventricle\n")
    for path in (json_file, yaml_file):
        table = load_label_table(str(path))
        assert table.class_of_value == {11: CLASS_NAMES.index("aorta") + 1, 12: 1}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"1": "spleen"}', "unknown class 'spleen'"),
        ('{"one": "aorta"}', "label value 'one' is not an integer"),
        ('{"0": "aorta"}', "label value 0 is background"),
        ("[1, 2]", "expected a mapping"),
        ("{not json", "cannot read label table"),
    ],
)
def test_bad_table_files(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "table.json"
    path.write_text(content)
    with pytest.raises(LabelTableError, match=r"table\.json") as error:
        load_label_table(str(path))
    assert words in str(error.value)


def test_unknown_table_name_lists_the_choices(run_cli: CLI) -> None:
    status, _, err = run_cli("labels", "--labels", "mmwhs2")
    assert status == 2
    assert "mmwhs2: not a label table: expected one of ['default', 'mmwhs', 'mmwhs-raw']" in err


def test_labels_command_prints_the_table(run_cli: CLI) -> None:
    status, out, _ = run_cli("labels", "--labels", "mmwhs")
    assert status == 0
    assert "label table: mmwhs" in out
    assert "     3      1  left_ventricle" in out
    status, out, _ = run_cli("labels", "--json")
    assert json.loads(out)["classes"]["10"] == "pulmonary_veins"
