"""The ``dump`` candidate: tensors some runtime already wrote (see parity.engines.dumps)."""
from __future__ import annotations

from typing import Any

from parity.capture import probes as canon
from parity.engines import shards
from parity.engines.base import Backend, Sink
from parity.engines.dumps import Dump, NameMap, canonical_shape, check_ids, load_name_map, read_dump
from parity.errors import UsageError


class DumpBackend(Backend):
    requires = ("safetensors",)

    def __init__(self, dump: Dump, config: Any, num_blocks: int) -> None:
        super().__init__("dump")
        self.dump = dump
        self.config = config
        self.ranks = shards.RankCheck(getattr(dump, "ranks", 1))
        wanted = set(canon.all_probes(num_blocks))
        beyond = [p for p in dump.probes if p not in wanted]
        if beyond:
            raise UsageError(f"the dump holds '{beyond[0]}', which a {num_blocks}-block model does not have.",
                             note="is the dump from another model?")

        tokens = len(dump.input_ids) if dump.input_ids else _token_count(dump, config)
        self.not_exposed: dict[str, str] = {}
        if dump.last_token_logits(tokens):
            self.not_exposed["logits"] = (
                "the dump holds the last prompt token's logits only ([batch, vocab]: an engine built without "
                "gather_context_logits); rebuild with BuildConfig(gather_context_logits=True) to compare every token")

    def available_probes_impl(self) -> list[str]:
        return [p for p in self.dump.probes if p not in self.not_exposed]

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        ids = [int(x) for x in input_ids]
        check_ids(self.dump, ids)
        logits = None
        for p in probes:
            shape = canonical_shape(canon.parse(p).point, self.config, len(ids))
            t = self.dump.tensor(p, shape)
            if self.ranks.tp > 1:  # per-rank dumps: each rank's part against its slice of the reference
                self.ranks.record(p, sink, shards.rank_parts(p, self.dump.raw(p), shape, self.dump.tp_rules.get(p)))
            sink(p, t)
            if p == "logits":
                logits = t
        return logits

    def annotate(self, summary: dict[str, Any], calib: Any) -> None:
        """Name the rank a divergence lives on (parity.engines.shards)."""
        self.ranks.annotate(summary, calib)

    def describe(self) -> dict[str, Any]:
        m = self.dump.meta
        dtypes = {str(m.get("probes", {}).get(p, {}).get("dtype")) for p in self.dump.probes} - {"None"}
        out = {"backend": self.label, "layout": self.dump.layout, "folder": str(self.dump.folder),
               "tp_ranks": self.dump.ranks, "dtype": dtypes.pop() if len(dtypes) == 1 else m.get("dtype"),
               "written_by": m.get("backend")}
        if self.not_exposed:
            out["not_exposed"] = dict(self.not_exposed)
        if self.dump.notes:
            out["notes"] = list(self.dump.notes)
        if "executor" in m:
            out["executor"] = m["executor"]
        return out


def _token_count(dump: Dump, config: Any) -> int:
    """Prompt tokens of a dump without input ids: the first dim of a hidden-state probe."""
    for p in dump.probes:
        if p != "logits":
            shape = canonical_shape(canon.parse(p).point, config, 1)
            t = dump.raw(p)[0]
            while t.dim() > len(shape) and t.shape[0] == 1:
                t = t[0]
            return int(t.shape[0]) if t.dim() == len(shape) else 0
    return 0


def create(ctx: Any) -> DumpBackend:
    o = ctx.options
    if not getattr(o, "dump", None):
        raise UsageError("--candidate dump needs --dump DIR.", note="a folder written by `parity dump`, a tllm_debug/ folder, or rank<N>/*.pt dumps")
    nm: NameMap = load_name_map(getattr(o, "dump_map", None))
    dump = read_dump(o.dump, nm)
    made_for = dump.meta.get("model")
    if made_for and made_for != ctx.source.family.name:
        raise UsageError(f"the dump in {dump.folder} is of model '{made_for}', this run is '{ctx.source.family.name}'.",
                         note=f"run with --model {made_for}")
    return DumpBackend(dump, ctx.source.config, ctx.source.num_blocks)
