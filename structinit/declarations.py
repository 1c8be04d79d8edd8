"""What a study declares about its report, beside the study (Study.pairs, Study.plots): the paired
differences a - b it compares and the plots it draws. Names only, so a study script declares them
without importing the report (MLflow, pandas, scipy); report.py reads them."""

IMPULSE_PAIRS = (("impulse", "mimetic"), ("impulse", "default"), ("impulse", "torch_default"),
                 ("impulse", "pe_scaled"),  # ViT inits (torch_default: the footings' baseline)
                 ("impulse", "conditioned"), ("impulse", "dct"), ("impulse", "mimetic_vo"),  # the attention-init
                 ("conditioned", "torch_default"), ("dct", "torch_default"),  # baselines a reviewer asks for, and
                 ("mimetic_vo", "torch_default"),  # whether each beats the footing's unstructured init at all
                 ("pe_scaled", "torch_default"), ("pe_scaled", "default"))  # the decomposition's PE part
FILTER_PAIRS = (("frozen_random", "learned"), ("frozen_impulse", "learned"), ("frozen_box", "learned"))  # ConvMixer
PAIRS = IMPULSE_PAIRS + FILTER_PAIRS  # a study that declares none: each pair where both inits ran
PLOTS = ("curves", "heads_vs_dim", "filter_gap", "param_importances", "attention")  # each where the results allow
