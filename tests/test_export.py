"""Exported artifacts that take raw ids: the documented loader (docs/serving.md), verbatim, against `dlrm predict`."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, Dlrm, assert_error
from fixtures import write_generic_csv, write_ml1m

SERVING = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
FAST = ["--epochs", "1", "--embedding-dim", "8", "--batch-size", "256"]
CSV = [
    "--user-col", "customer", "--item-col", "sku", "--rating-col", "stars",
    "--dense-cols", "price", "--sparse-cols", "brand,tags,region", "--time-col", "when",
]  # fmt: skip

# Runs a script where torch imports but dlrm and TorchRec (and FBGEMM) cannot be imported at all.
NOTHING_BUT_TORCH = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dlrm_cli", "torchrec", "fbgemm_gpu"):
            raise ImportError(f"{name} may not be imported here")
sys.meta_path.insert(0, Refuse())
exec(compile(open(SCRIPT).read(), SCRIPT, "exec"), {"__name__": "__main__"})
"""


def documented_loader() -> str:
    """The documented loader that needs PyTorch alone, exactly as written there."""
    text = SERVING.read_text().split("## A loader that needs PyTorch alone", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def run_without_dlrm(script: str, folder: Path) -> str:
    path = folder / "serve_model.py"
    path.write_text(script)
    code = f"SCRIPT = {str(path)!r}\n" + NOTHING_BUT_TORCH
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def predicted(dlrm: Dlrm, user: str, items: list[str]) -> dict[str, float]:
    result = dlrm("predict", "--user", user, "--items", ",".join(items), "--json")
    assert result.exit_code == 0, result.output
    return {entry["item"]: entry["rating"] for entry in json.loads(result.stdout)["items"]}


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> Dlrm:
    folder = tmp_path_factory.mktemp("ml")
    dlrm = Dlrm(folder / "store")
    assert dlrm("train", "--data", f"movielens:{write_ml1m(folder / 'ml-1m')}", *FAST).exit_code == 0
    return dlrm


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Dlrm:
    folder = tmp_path_factory.mktemp("shop")
    dlrm = Dlrm(folder / "store")
    result = dlrm("train", "--data", f"csv:{write_generic_csv(folder / 'shop.csv')}", *CSV, *FAST)
    assert result.exit_code == 0, result.output
    return dlrm


@pytest.mark.slow
@pytest.mark.parametrize("which", ["synthetic", "movielens"])
def test_the_documented_loader_runs_verbatim_and_agrees_with_predict(which, trained, movielens, tmp_path):
    dlrm = trained if which == "synthetic" else movielens
    result = dlrm("export", "--output", tmp_path / "model.pt2")
    assert result.exit_code == 0, result.output
    assert "as pt2 taking ids" in result.stdout  # the defaults: torch.export, raw ids
    ratings, known = ast.literal_eval(run_without_dlrm(documented_loader(), tmp_path))
    expected = predicted(dlrm, "42", ["101", "102"])
    assert ratings == pytest.approx([expected["101"], expected["102"]], abs=1e-4)  # the snippet rounds to 4
    # the synthetic data has items 0..149; the small MovieLens folder has 40 items, so 101 and 102 are unknown
    assert known == ([True, True] if which == "synthetic" else [False, False])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_string_ids_and_unknown_ids_through_the_loader(shop, tmp_path, fmt):
    output = tmp_path / f"shop.{fmt}"
    assert shop("export", "--format", fmt, "--output", output).exit_code == 0
    description = json.loads(Path(f"{output}.json").read_text())
    assert "c3" in description["users"]["vocabulary"] and "sku-1" in description["items"]["vocabulary"]
    loader = documented_loader().split("\n\nmodel = ")[0]  # the class, used on this artifact
    items = ["sku-1", "sku-2", "sku-new"]
    script = f"{loader}\n\nprint(Ratings({str(output)!r}).predict('c3', {items!r}))\n"
    ratings, known = ast.literal_eval(run_without_dlrm(script, tmp_path))
    expected = predicted(shop, "c3", items)
    assert ratings == pytest.approx([expected[item] for item in items], abs=1e-4)
    assert known == [True, True, False]


def test_the_artifact_tells_unknown_users_and_holds_its_description(movielens, tmp_path):
    import torch

    output = tmp_path / "model.pt2"
    assert movielens("export", "--output", output).exit_code == 0
    extra = {"dlrm.json": ""}
    with output.open("rb") as file:
        model = torch.export.load(file, extra_files=extra).module()
    assert json.loads(extra["dlrm.json"]) == json.loads(Path(f"{output}.json").read_text())
    ratings, user_known, item_known = model(torch.tensor([3, 99999, 3]), torch.tensor([1, 1, 99999]))
    assert user_known.tolist() == [True, False, True] and item_known.tolist() == [True, True, False]
    expected = predicted(movielens, "99999", ["1"])["1"]  # predict rates an unknown user the same way
    assert float(ratings[1]) == pytest.approx(expected, abs=1e-5)


def test_features_artifacts_keep_the_low_level_call(trained, tmp_path):
    output = tmp_path / "model.pt2"
    result = trained("export", "--inputs", "features", "--output", output, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"] == "features"
    description = json.loads(Path(f"{output}.json").read_text())
    assert description["call"] == "model(dense, ids, offsets) -> ratings (float32, size B)"
    assert [f["feature"] for f in description["sparse"]] == ["user_id", "item_id", "category", "channel"]


def test_bad_export_options(trained):
    assert_error(trained("export", "--output", "m.pt2", "--inputs", "rows"), 2, "--inputs must be one of ids")
    assert_error(trained("export", "--output", "m.pt2", "--format", "pt2", "--quantize", "int8"), 2, "TorchScript")


@pytest.mark.slow
def test_int8_takes_ids_too(dlrm, tmp_path):
    assert dlrm("train", "--epochs", "1", *TINY).exit_code == 0
    output = tmp_path / "q.pt"
    result = dlrm("export", "--quantize", "int8", "--output", output, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "torchscript" and report["inputs"] == "ids"
    code = f"""
import torch, torchrec
ratings, users, items = torch.jit.load({str(output)!r})(torch.tensor([42, 42]), torch.tensor([101, 102]))
print([round(r, 6) for r in ratings.tolist()], users.tolist(), items.tolist())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    ratings, users, items = ast.literal_eval(out.stdout.strip().replace("] [", "], ["))
    assert users == items == [True, True]
    expected = predicted(dlrm, "42", ["101", "102"])
    assert ratings == pytest.approx([expected["101"], expected["102"]], abs=0.05)  # int8 tables: close, not equal
