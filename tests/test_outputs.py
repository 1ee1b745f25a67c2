"""A run's files as one unit: all of them or none, nothing the user had lost, one run per --out,
temp files cleaned on errors and signals; and the size/type rules that are not an exit-2 case
(a config's int eps accepted as a float, ids outside a tokenizer shown, not fatal)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from parity.errors import ParityError, UsageError
from parity.outputs import Outputs


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_new_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "a" / "run"
    with pytest.raises(RuntimeError), Outputs(out, [("--html", tmp_path / "p.html")]) as o:
        (o.dir / "report.json").write_text("{}")
        o.file(tmp_path / "p.html").write_text("<html>")
        raise RuntimeError("the HTML renderer broke")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the parent it made
    with Outputs(out, [("--html", tmp_path / "p.html")]) as o:
        (o.dir / "report.json").write_text("{}")
        o.file(tmp_path / "p.html").write_text("<html>")
        assert not out.exists()  # nothing in place before the end
    assert sorted(p.name for p in out.iterdir()) == ["report.json"] and (tmp_path / "p.html").read_text() == "<html>"
    assert _hidden(tmp_path) == []


def test_existing_folder_keeps_the_users_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), Outputs(out) as o:
        (o.dir / "report.json").write_text("new")
        raise KeyboardInterrupt  # Ctrl-C while writing
    assert (out / "report.json").read_text() == "old" and _hidden(tmp_path) == []
    with Outputs(out) as o:
        (o.dir / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "new" and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("existing", [False, True])
def test_a_killed_runs_staging_is_removed_by_the_next_run(tmp_path: Path, existing: bool) -> None:
    """SIGKILL leaves the hidden staging folder (beside a new --out, inside an existing one);
    the next run on the same --out, holding its lock, removes it -- and nothing else."""
    out = tmp_path / "run"
    home = out if existing else tmp_path
    if existing:
        out.mkdir()
    stale = home / ".run.parity-tmp-0a1b2c3d"
    stale.mkdir()
    (stale / "report.json").write_text("half")
    keep = [home / ".other.parity-tmp-0a1b2c3d", home / ".run.parity-tmp-notes", home / ".run.parity-tmp-0a1b2c3d5"]
    for k in keep:
        k.mkdir()
    with Outputs(out) as o:
        (o.dir / "report.json").write_text("{}")
    assert not stale.exists() and all(k.is_dir() for k in keep)
    assert (out / "report.json").read_text() == "{}"


def test_folder_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with Outputs(tmp_path / "run") as o:
            (o.dir / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750


def test_second_run_on_the_same_out_is_refused(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "run"
    with Outputs(out):
        code, _, err = run_cli("run", "--tokens", "2", "-q", "--out", str(out))
        assert code == 2 and "in use by another parity run" in err
        with pytest.raises(UsageError, match="in use"), Outputs(out):
            pass
    with Outputs(out):  # released
        pass
    assert _hidden(tmp_path) == []


def test_html_failure_leaves_no_partial_run(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """report.json and probes.csv are not written when the HTML page fails after them."""
    from parity.report import html

    def broken(report, path):  # noqa: ANN001, ANN202
        raise UsageError("HTML reports need jinja2, which is not installed.")

    monkeypatch.setattr(html, "write", broken)
    out = tmp_path / "run"
    code, _, err = run_cli("run", "--tokens", "2", "--no-isolate", "-q", "--out", str(out), "--html", str(tmp_path / "r.html"))
    assert code == 2 and "jinja2" in err
    assert sorted(os.listdir(tmp_path)) == []


def test_port_exiting_in_its_forward_is_not_a_pass(tmp_path: Path, run_cli) -> None:
    port = tmp_path / "port.py"
    port.write_text("import sys\nimport torch\nfrom torch import nn\n"
                    "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    "        self.w = nn.Parameter(torch.zeros(1))\n"
                    "    def forward(self, ids):\n        sys.exit(0)\n"
                    "def build(config, sd):\n    return M()\n")
    code, _, err = run_cli("run", "--tokens", "2", "--no-isolate", "-q", "--candidate", "port", "--port", f"{port}:build",
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "sys.exit(0)" in err


def test_int_eps_is_taken_as_a_float() -> None:
    from parity.loading.families import load_preset
    from parity.loading.schema import check_config

    cfg = check_config("llama", {**load_preset("llama").config, "rms_norm_eps": 1}, "config.json")
    assert cfg["rms_norm_eps"] == 1.0 and isinstance(cfg["rms_norm_eps"], float)
    from parity.loading.families import get

    assert get("llama").make_config(cfg).rms_norm_eps == 1.0  # transformers' strict dataclass takes it


def test_ids_outside_the_tokenizer_are_shown_not_fatal() -> None:
    from parity.loading.chat import _decode

    class Tiny:
        def __len__(self) -> int:
            return 3

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            if any(i >= 3 for i in ids):
                raise IndexError("id out of range")  # what tokenizers do
            return "".join("abc"[i] for i in ids)

    assert _decode(Tiny(), [0, 1, 7, 2]) == "ab<id 7>c"


def test_memory_bound_names_the_sizes() -> None:
    from parity.loading.limits import check_model_memory, check_tokens

    with pytest.raises(ParityError, match="GiB"):
        check_model_memory({"vocab_size": 4_000_000, "hidden_size": 131072, "num_hidden_layers": 1024,
                            "intermediate_size": 1 << 20}, "config.json")
    with pytest.raises(ParityError, match="tokens"):
        check_tokens(900_000, {"vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 32,
                               "num_attention_heads": 32}, "--tokens 900000")
    check_tokens(32, {"vocab_size": 151936, "hidden_size": 128, "num_hidden_layers": 4}, "--tokens 32")


def test_dump_keeps_manifest_last_and_cleans_up_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch as st
    import torch

    from parity.loading import dumps

    def fail(*a, **k):  # noqa: ANN002, ANN003, ANN202
        Path(a[1]).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", fail)
    with pytest.raises(OSError):
        dumps.write_dump(tmp_path / "d", {"embed": torch.zeros(2, 3)}, {"input_ids": [1, 2]})
    assert os.listdir(tmp_path / "d") == []
