"""Ground truth of the mutants: where each one's change first shows, and what it did, written
from the mutated statement (generate.py prints them) -- never from parity's output.

``LABELS[id]`` is the set of causes that describe a mutant (empty: a change nobody would name
in one phrase; any name parity gives it is then counted wrong). Labels are small strings the
runner also derives from parity's named hypothesis (run.label_of), e.g. ``rot:sin,cos,rh``
(rotary computed as x*sin + R(x)*cos with R = rotate_half), ``attn:k,q,v`` (the attention's
query, key and value operands), ``expr:2*{in}`` (the probe equals twice the block's input
stream). ``{L}``, ``{P}`` (= L - 1), ``{in}`` (the block's input stream) are filled per case.
"""
from __future__ import annotations

# the rotary runs inside the attention: a reference that exposes no q_rot/k_rot shows it at attn_out
ROPE_QK = ("attn.q_rot", "attn.k_rot", "attn_out")

# (points by default, labels)
ROTARY = {
    "m012": {"rot:cos,sin,a,-b"}, "m013": {"rot:cos,sin,swap"}, "m014": {"rot:cos,sin,-b,b"},
    "m015": {"rot:cos,sin,-a,a"},
    "m027": {"rot:sin,cos,rh"}, "m028": {"rot:sin,sin,rh"}, "m032": {"rot:cos,cos,rh"}, "m043": {"rot:cos,0,rh"},
    "m044": {"rot:0,sin,rh"}, "m045": {"rot:cos,sin,-rh"}, "m046": set(), "m047": {"rot:1,sin,rh"}, "m048": set(),
    "m049": set(), "m050": {"rot:cos,1,rh"}, "m051": set(), "m055": {"rot:sin,sin,rh"}, "m056": {"rot:cos,sin,id"},
    "m057": {"rot:cos,cos,rh"}, "m061": {"rot:sin,cos,rh"}, "m063": {"rot:sin,cos,rh"}, "m066": {"rot:sin,sin,rh"},
    "m067": {"rot:cos,cos,rh"}, "m070": {"rot:sin,sin,rh"}, "m071": {"rot:cos,cos,rh"},
    "m059": {"expr:blocks.{L}.attn.k_rot", "heads:q<-k", "attn:k,q,v"},
    "m064": {"expr:blocks.{L}.attn.k_rot", "heads:q<-k", "attn:k,k,v"}, "m065": {"rot-of:v"},
    "m068": {"expr:blocks.{L}.attn.q_rot", "heads:k<-q", "attn:q,q,v"}, "m069": {"rot-of:v"},
}
ATTN = {
    "m087": {"attn:k,q,v"}, "m088": {"attn:q,v,k"}, "m107": {"attn:k,k,v"}, "m108": {"attn:v,k,v"},
    "m109": {"attn:q,q,v"}, "m110": {"attn:q,v,v"}, "m111": {"attn:q,k,q"}, "m112": {"attn:q,k,k"},
    "m113": {"attn:q,v,k"}, "m125": {"attn:q,v,v"}, "m127": {"attn:q,k,k"}, "m133": {"attn:k,k,v"},
    "m134": {"attn:v,k,v"}, "m140": {"attn:q,q,v"}, "m141": {"attn:q,v,v"}, "m184": {"attn:q,k,q"},
    "m185": {"attn:q,k,k"}, "m118": {"gqa-tiled:k"}, "m123": {"gqa-tiled:v"},
    "m128": {"softmax-scale=1"}, "m129": {"softmax-scale=sqrt(d)"}, "m131": {"softmax-scale=1/d"},
    "m138": {"softmax-scale=1"}, "m139": {"softmax-scale=1/sqrt(heads)"},
    "m148": {"no-mask"}, "m157": {"no-mask"}, "m158": {"mask-shift=1"}, "m160": {"mask-inverted"},
    "m166": {"softmax-axis"}, "m169": {"softmax-axis"}, "m183": {"no-softmax"},
    "m260": {"o_proj-skipped"}, "m261": {"transposed:o_proj"},
}
HEADS = {  # (focus point, label)
    "m228": ("attn.q", "heads:q<-k"), "m229": ("attn.k", "heads:k<-v"), "m239": ("attn.q", "heads:q<-k"),
    "m240": ("attn.q", "heads:q<-v"), "m243": ("attn.k", "heads:k<-q"), "m244": ("attn.k", "heads:k<-v"),
    "m245": ("attn.v", "heads:v<-q"), "m246": ("attn.v", "heads:v<-k"),
}
MLP = {
    "m270": {"act-wrong-branch"}, "m271": {"mlp:act(g)*g"}, "m272": {"mlp:act(g)*g"}, "m274": {"mlp:act(g)*g"},
    "m275": {"mlp:act(g)*g"}, "m284": {"mlp:act(g)*g"}, "m285": {"mlp:act(u)*u", "act-wrong-branch-both"},
    "m276": {"mlp:act(g)"}, "m277": {"mlp:u"}, "m278": {"mlp:act(g)/u"}, "m279": {"act:none"},
    "m280": {"act:gelu"}, "m281": {"act:relu"}, "m282": {"act:sigmoid"}, "m283": {"act:tanh"},
    "m335": {"mlp-input:blocks.{L}.resid_mid"}, "m336": {"mlp-input:blocks.{P}.mlp_out"},
}
# the fused add + norm: (input@L / final, post@L) -> (point, labels). a = the added output
# (previous block's mlp_out), r = the incoming residual (previous resid_mid).
NORM_IN = {
    "m286": {"expr:norm({a})"}, "m287": {"expr:norm({r})"}, "m288": {"expr:norm({a}-{r})"},
    "m290": {"expr:norm({r})", "expr:norm(2*{r})"}, "m291": {"expr:norm({a})", "expr:norm(2*{a})"},
    "m295": {"expr:norm({r})"}, "m313": {"expr:{in}", "norm-skipped"},
    "m324": {"expr:norm({r})", "expr:norm(2*{r})"}, "m326": {"expr:norm({a})", "expr:norm(2*{a})"},
    "m363": {"expr:norm({r})", "expr:norm(2*{r})"}, "m364": {"expr:norm({a})", "expr:norm(2*{a})"},
}
NORM_POST = {  # resid_mid of block L, unless noted
    "m286": {"expr:blocks.{L}.attn_out"}, "m287": {"expr:{in}"}, "m288": {"expr:blocks.{L}.attn_out-{in}"},
    "m290": {"expr:2*{in}"}, "m291": {"expr:2*blocks.{L}.attn_out"}, "m313": {"expr:blocks.{L}.mlp_in"},
    "m318": {"expr:{in}"}, "m328": {"expr:2*{in}"}, "m329": {"expr:blocks.{P}.mlp_out+{in}"},
    "m330": {"expr:2*blocks.{L}.attn_out"}, "m331": {"expr:blocks.{L}.attn_out+blocks.{P}.mlp_out"},
}
NORM_FORMULA = {  # the norm's own output (attn_in / mlp_in / final_norm)
    "m296": {"norm-formula:no-rms"}, "m297": {"norm-formula:rsqrt-only"}, "m298": {"norm-formula:x*rms"}, "m302": {"norm-formula:x*rms"},
    "m301": {"norm-formula:x*ms"}, "m303": {"norm-eps"}, "m305": {"norm-eps"}, "m306": {"norm-axis:elementwise"},
    "m307": {"norm-axis:tokens"}, "m310": {"norm-formula:pow4"}, "m312": set(), "m314": {"norm-no-weight"},
    "m315": set(), "m316": {"norm-formula:x/w"},
}
RESID_POST = {"m333": {"expr:blocks.{L}.mlp_out+blocks.{L}.mlp_in"}, "m334": {"expr:blocks.{L}.mlp_out+blocks.{P}.mlp_out"}}
TABLE = {
    "m338": {"rotary-base=1/base"}, "m339": {"rotary-none"}, "m340": {"rope-scale=2"}, "m341": set(), "m342": set(),
    "m345": set(), "m346": {"rope-scale=base^(-1/d)"}, "m349": set(), "m350": {"rotary-partial=d/2"},
    "m353": set(), "m354": set(), "m357": set(), "m358": {"rot-table:sin,cos", "expr:rope.sin"}, "m359": {"rope-positions=0"},
}


def truth(mid: str, norm: str, layer: int, num_blocks: int) -> tuple[set[str], set[str], int | None] | None:
    """(expected points, expected labels, expected block) of mutant ``mid`` applied at ``layer``
    (``norm``: which fused norm took a FusedAddRMSNorm mutant); None when unknown."""
    L, P = layer, layer - 1
    last = num_blocks - 1
    inp = "embed" if L == 0 else f"blocks.{P}.resid_post"

    def fill(labels: set[str], a: str = "", r: str = "") -> set[str]:
        return {x.replace("{a}", a).replace("{r}", r).replace("{in}", inp).replace("{L}", str(L)).replace("{P}", str(P))
                for x in labels}

    if mid in ROTARY:
        return set(ROPE_QK), fill(ROTARY[mid]), L
    if mid in ATTN:
        return {"attn_out"}, fill(ATTN[mid]), L
    if mid in HEADS:
        point, label = HEADS[mid]
        return {point}, {label}, L
    if mid in MLP:
        return {"mlp_out"}, fill(MLP[mid]), L
    if mid in RESID_POST:
        return {"resid_post"}, fill(RESID_POST[mid]), L
    if mid in TABLE:
        return {"rope.cos", "rope.sin"}, TABLE[mid], None
    if mid in ("m363", "m364"):
        return {"final_norm"}, fill(NORM_IN[mid], f"blocks.{last}.mlp_out", f"blocks.{last}.resid_mid"), None
    if mid in ("m324", "m326"):
        return {"attn_in"}, fill(NORM_IN[mid], f"blocks.{P}.mlp_out", f"blocks.{P}.resid_mid"), L
    if mid in ("m328", "m329", "m330", "m331"):
        return {"resid_mid"}, fill(NORM_POST[mid]), L
    if norm == "final":
        if mid in NORM_FORMULA:
            return {"final_norm"}, NORM_FORMULA[mid], None
        if mid in NORM_IN:
            labels = NORM_IN[mid] if mid != "m313" else {f"expr:blocks.{last}.resid_post", "norm-skipped"}
            return {"final_norm"}, fill(labels, f"blocks.{last}.mlp_out", f"blocks.{last}.resid_mid"), None
        return None
    if norm == "input":
        if mid in NORM_FORMULA:
            return {"attn_in"}, NORM_FORMULA[mid], L
        if mid in NORM_IN:
            return {"attn_in"}, fill(NORM_IN[mid], f"blocks.{P}.mlp_out", f"blocks.{P}.resid_mid"), L
        if mid == "m318":
            return {"resid_mid"}, fill({"expr:blocks.{L}.attn_out+blocks.{P}.resid_mid"}), L
        return None
    if norm == "post":
        if mid in NORM_FORMULA:
            if mid == "m315":
                return {"mlp_in"}, set(), L
            return {"mlp_in"}, NORM_FORMULA[mid], L
        if mid == "m295":
            return {"mlp_in"}, fill({"expr:norm({in})"}), L
        if mid in NORM_POST:
            return {"resid_mid"}, fill(NORM_POST[mid]), L
    return None
