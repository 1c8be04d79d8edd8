"""The names of what a run reports beyond each epoch's losses and accuracies, declared once: train.py
writes them, and results.py's tables, report.py's tables and `structinit train`'s summary read them."""

INIT = ("init_mass_pseudo", "init_hit_pseudo", "init_mass_data", "init_hit_data", "init_hit_chance", "init_wq_norm",
        "init_wk_norm", "init_gain", "init_pe_scale", "init_rank_k", "init_stable_rank", "init_width_ratio",
        "init_mass_solved")  # measured at init (train.initial_measures), reported with every epoch
# the test top-1 of the final model and of the best validation epoch's weights
TEST_TOP1 = ("final_test_top1", "test_top1_at_best_val")
TOP1 = (*TEST_TOP1, "best_val_top1")  # with the best validation top-1: the accuracies a report gives CIs of
FINAL = (*TOP1, "best_val_epoch")  # the last epoch's summary (train.final_summary)
