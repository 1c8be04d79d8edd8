"""The report: what it flags from the rows it reads."""
import json

import pandas as pd
import pytest

from structinit.report import markdown, summarize


def test_report_flags_near_chance_inits_and_an_unscaled_pe_control():
    rows = [dict(status="TERMINATED", config_key="k", params=json.dumps({"model.embed_dim": 64}), init=init,
                 seed=seed, final_test_top1=80.0 + seed, test_top1_at_best_val=81.0, init_mass_pseudo=0.9,
                 init_mass_data=0.2, init_hit_data=hit, init_hit_chance=1 / 16, init_wq_norm=5.7,
                 init_pe_scale=1.0)
            for seed in range(3) for init, hit in (("impulse", 0.1 if seed else 0.5), ("pe_scaled", 0.3))]
    table, paired = summarize(pd.DataFrame(rows))
    imp = table[table.init == "impulse"].iloc[0]
    assert imp.near_chance == 2 and imp.init_hit_data == pytest.approx((0.5 + 0.1 + 0.1) / 3)
    assert table[table.init == "pe_scaled"].iloc[0].near_chance == 0
    text = markdown("s", table, paired, pd.DataFrame(rows))
    assert "⚠ 2/3 near chance" in text and "5.70" in text
    assert "`pe_scaled` ran with a PE scale of 1" in text
    scaled = [dict(r, init_pe_scale=18.0) for r in rows]
    assert "PE scale of 1" not in markdown("s", *summarize(pd.DataFrame(scaled)), pd.DataFrame(scaled))

