"""Seeded AST mutants of the engine-style ports (models/engine.py).

Each operator walks the functions of the engine that a port runs and yields a one-node change
of their source: swap two arguments or tuple elements, drop a term of a sum/product, replace a
variable by a sibling (q/k/v, cos/sin, gate/other, hidden/residual...), change a reduction axis
or dim, change a constant, drop a unary call (sqrt, the activation, a cast), flip an operator or
a sign, change a mask diagonal, replace an activation, use a square weight transposed.

The ground truth of a mutant is what its operator did and where: :func:`truth` labels each one
from the operator, the function it changed and the changed statement (never from parity's
output): the probes its change first shows at, and the causes that describe it.
"""
from __future__ import annotations

import ast
import copy
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINE = Path(__file__).resolve().parents[2] / "models" / "engine.py"

#: the functions whose mutants can reach one layer alone (their class is swapped on that layer),
#: and the global ones (rotary table, the model's forward)
FUNCTIONS = ("rotate_half", "apply_rotary", "attention", "FusedQKVAttention.split", "FusedQKVAttention.forward",
             "GatedMLP.forward", "FusedAddRMSNorm.forward", "DecoderLayer.forward", "RotaryTable._build",
             "EnginePort.forward")
SIBLINGS = [("q", "k", "v"), ("qh", "kh", "vh"), ("cos", "sin"), ("c", "s"), ("gate", "other"), ("x1", "x2"),
            ("rot", "rest"), ("x", "xf", "residual"), ("hidden", "residual", "hidden_states"), ("probs", "scores")]
DIM_CALLS = {"softmax", "mean", "chunk", "cat", "repeat_interleave", "transpose", "split"}
UNARY_DROP = {"sqrt", "silu", "rsqrt", "float", "tril", "o_proj", "type_as", "rotate_half"}
ACTIVATIONS = {"silu": ["gelu", "relu", "sigmoid", "tanh"]}


@dataclass
class Mutant:
    id: str
    op: str
    function: str
    line: int
    before: str
    after: str
    edit: Any = field(repr=False, default=None)  # (original source, path to the node, replacement)
    _source: str | None = field(repr=False, default=None)

    def source(self) -> str:
        """The mutated engine source (built on first use)."""
        if self._source is None:
            src, path, new = self.edit
            tree = ast.parse(src)
            fn = _functions(tree)[self.function]
            target = _follow(fn, path)
            parent, field_, idx = _parents(fn)[id(target)]
            if idx is None:
                setattr(parent, field_, copy.deepcopy(new))
            else:
                getattr(parent, field_)[idx] = copy.deepcopy(new)
            self._source = ast.unparse(tree)
        return self._source


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef):
                    out[f"{node.name}.{sub.name}"] = sub
    return out


def _stmt_of(parents: dict[int, tuple[ast.AST, str, int | None]], fn: ast.FunctionDef, node: ast.AST) -> ast.stmt | None:
    """The innermost statement of ``fn`` holding ``node``."""
    while node is not fn:
        if isinstance(node, ast.stmt):
            return node
        node = parents[id(node)][0]
    return None


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _edits(node: ast.AST, fn_locals: set[str]) -> Iterator[tuple[str, ast.AST]]:
    """(operator, replacement of ``node``) for every operator that applies to ``node``."""
    if isinstance(node, ast.Call):
        name = _call_name(node)
        for i in range(len(node.args) - 1):
            new = copy.deepcopy(node)
            new.args[i], new.args[i + 1] = new.args[i + 1], new.args[i]
            yield "swap-args", new
        if name in DIM_CALLS:
            for i, kw in enumerate(node.keywords):
                if kw.arg == "dim" and isinstance(kw.value, (ast.Constant, ast.UnaryOp)):
                    for d in (-1, -2, 0, 1, 2):
                        if ast.unparse(kw.value) != str(d):
                            new = copy.deepcopy(node)
                            new.keywords[i].value = ast.parse(str(d), mode="eval").body
                            yield "change-dim", new
        if name in UNARY_DROP:
            if isinstance(node.func, ast.Attribute) and name in ("float", "tril", "type_as") and not isinstance(node.func.value, ast.Name) or \
                    isinstance(node.func, ast.Attribute) and name in ("float", "tril", "type_as"):
                yield "drop-call", copy.deepcopy(node.func.value)
            elif node.args:
                yield "drop-call", copy.deepcopy(node.args[0])
        if name == "tril":
            for d in (1, -1):
                new = copy.deepcopy(node)
                new.args = [ast.Constant(d)]
                yield "mask-offset", new
            new = copy.deepcopy(node)
            new.func.attr = "triu"
            yield "mask-offset", new
        if name in ACTIVATIONS and isinstance(node.func, ast.Attribute):
            for other in ACTIVATIONS[name]:
                new = copy.deepcopy(node)
                new.func = ast.parse("torch.sigmoid" if other == "sigmoid" else "torch.tanh" if other == "tanh" else f"F.{other}",
                                     mode="eval").body
                yield "change-activation", new
        if name == "o_proj" and node.args:
            yield "transpose", ast.parse(f"F.linear({ast.unparse(node.args[0])}, self.o_proj.weight.T)", mode="eval").body
        if name == "repeat_interleave":
            yield "swap-method", ast.parse(ast.unparse(node).replace(".repeat_interleave(rep, dim=1)",
                                                                    ".repeat(1, rep, 1, 1)"), mode="eval").body
        if name in ("rsqrt", "sqrt") and isinstance(node.func, ast.Attribute) and node.func.attr == "rsqrt":
            new = copy.deepcopy(node)
            new.func.attr = "sqrt"
            yield "swap-method", new
    elif isinstance(node, ast.Tuple) and isinstance(node.ctx, ast.Load):
        for i in range(len(node.elts) - 1):
            if ast.unparse(node.elts[i]) != ast.unparse(node.elts[i + 1]):
                new = copy.deepcopy(node)
                new.elts[i], new.elts[i + 1] = new.elts[i + 1], new.elts[i]
                yield "swap-args", new
    elif isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            yield "drop-term", copy.deepcopy(node.left)
            if not isinstance(node.op, ast.Div):
                yield "drop-term", copy.deepcopy(node.right)
            flip = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}[type(node.op)]
            new = copy.deepcopy(node)
            new.op = flip()
            yield "flip-op", new
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
        yield "flip-sign", copy.deepcopy(node.operand)
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        for group in SIBLINGS:
            if node.id in group:
                for other in group:
                    if other != node.id and other in fn_locals:
                        yield "sibling", ast.Name(other, ast.Load())
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        for v in {node.value + 1, node.value * 2, node.value - 1} - {node.value}:
            yield "change-const", ast.Constant(v)


def _locals(fn: ast.FunctionDef) -> set[str]:
    names = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    names |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def _parents(fn: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    out = {}
    for parent in ast.walk(fn):
        for fname, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, ast.AST):
                        out[id(v)] = (parent, fname, i)
            elif isinstance(value, ast.AST):
                out[id(value)] = (parent, fname, None)
    return out


def _skip(fn_name: str, stmt: ast.stmt) -> bool:
    """Statements a port's prefill never runs (cache, NTK, rotary twice) or that only probe."""
    text = ast.unparse(stmt).split("\n")[0]
    return any(w in text for w in ("past", "cache", "probe(", "rotary_before_kernel", "q_scale", "_ntk", "use_cache",
                                   "grouped", "position_ids", "rope.lookup", "self.rope is not None")) or \
        isinstance(stmt, (ast.If,)) and "rotary" not in text and "rep > 1" not in text


def generate(source: str | None = None) -> list[Mutant]:
    """Every mutant of the engine's port functions, in a fixed order."""
    src = source if source is not None else ENGINE.read_text()
    tree = ast.parse(src)
    out: list[Mutant] = []
    seen: set[str] = set()
    for fname in FUNCTIONS:
        fn = _functions(tree)[fname]
        loc = _locals(fn)
        parents = _parents(fn)
        nodes = [n for st in fn.body for n in ast.walk(st)]
        for node in nodes:
            stmt = _stmt_of(parents, fn, node)
            if stmt is None or _skip(fname, stmt) or isinstance(node, ast.stmt):
                continue
            if isinstance(stmt, ast.If) and node is stmt.test:
                continue
            shown = stmt.body[0] if isinstance(stmt, ast.If) else stmt
            if not any(n is node for n in ast.walk(shown)):
                continue
            before = ast.unparse(shown).split("\n")[0]
            for op, new in _edits(node, loc):
                p, f, i = parents[id(node)]
                old = getattr(p, f) if i is None else getattr(p, f)[i]
                if i is None:
                    setattr(p, f, new)
                else:
                    getattr(p, f)[i] = new
                after = ast.unparse(shown).split("\n")[0]
                if i is None:
                    setattr(p, f, old)
                else:
                    getattr(p, f)[i] = old
                key = fname + "|" + after
                if before == after or key in seen:
                    continue
                seen.add(key)
                out.append(Mutant(f"x{len(out):03d}", op, fname, stmt.lineno, before, after, (src, _path(fn, node), new)))
    return _stable_ids(out)


#: the mutants' ids, by (function, mutated statement): stable when the engine's code moves
#: (truth.py is keyed by them); a site listed with several statements is the same mutation
#: of a line the engine has since rewritten
SITES = Path(__file__).with_name("sites.json")


def _stable_ids(muts: list[Mutant]) -> list[Mutant]:
    """Each mutant's id from sites.json; a mutant of code written since keeps an ``x`` id (no truth)."""
    known = {(v[0], after): k for k, v in json.loads(SITES.read_text()).items() for after in v[1:]}
    for m in muts:
        m.id = known.get((m.function, m.after), m.id)
    return muts


def _path(root: ast.AST, node: ast.AST) -> list[tuple[str, int | None]]:
    par = _parents(root)
    path = []
    while node is not root:
        parent, f, i = par[id(node)]
        path.append((f, i))
        node = parent
    return path[::-1]


def _follow(root: ast.AST, path: list[tuple[str, int | None]]) -> ast.AST:
    node = root
    for f, i in path:
        node = getattr(node, f) if i is None else getattr(node, f)[i]
    return node


def sample(mutants: list[Mutant], n: int, seed: int = 0) -> list[Mutant]:
    rng = random.Random(seed)
    return sorted(rng.sample(mutants, min(n, len(mutants))), key=lambda m: m.id)


if __name__ == "__main__":
    for m in generate():
        print(f"{m.id} {m.op:17s} {m.function:26s} {m.before}  ==>  {m.after}")
