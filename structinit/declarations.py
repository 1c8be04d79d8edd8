"""What a study declares about its report, beside the study (Study.pairs, Study.plots): the paired
differences a - b it compares and the plots it draws; and what its search optimises (Study.objective,
`parse_objective`). Names only, so a study script declares them without importing the report
(MLflow, pandas, scipy); report.py and stats.py read them."""
from structinit.validate import check

# Impulse against the ViT inits (torch_default: the footings' baseline); against the attention-init
# baselines a reviewer asks for, and whether each of those beats the footing's unstructured init at
# all; and the decomposition's PE part (pe_scaled against the base inits).
IMPULSE_PAIRS = (("impulse", "mimetic"), ("impulse", "default"), ("impulse", "torch_default"), ("impulse", "pe_scaled"),
                 ("impulse", "conditioned"), ("impulse", "dct"), ("impulse", "mimetic_vo"),
                 ("conditioned", "torch_default"), ("dct", "torch_default"), ("mimetic_vo", "torch_default"),
                 ("pe_scaled", "torch_default"), ("pe_scaled", "default"))
FILTER_PAIRS = (("frozen_random", "learned"), ("frozen_impulse", "learned"), ("frozen_box", "learned"))  # ConvMixer
PAIRS = IMPULSE_PAIRS + FILTER_PAIRS  # a study that declares none: each pair where both inits ran
PLOTS = ("curves", "heads_vs_dim", "filter_gap", "param_importances", "attention")  # each where the results allow

OBJECTIVES = "mean, arm:<init> (e.g. arm:impulse) or gap:<a>-<b> (e.g. gap:impulse-torch_default)"


def parse_objective(objective: str) -> tuple[str, tuple[str, ...]]:
    """(kind, inits) of a declared objective: ("mean", ()), ("arm", (init,)) or ("gap", (a, b));
    a ValueError naming it otherwise."""
    kind, _, rest = str(objective).partition(":")
    inits = tuple(rest.split("-")) if rest else ()
    ok = ((kind == "mean" and not rest) or (kind == "arm" and len(inits) == 1 and all(inits))
          or (kind == "gap" and len(inits) == 2 and all(inits) and inits[0] != inits[1]))
    check("objective", objective, OBJECTIVES, ok)
    return kind, inits
