"""Today's default on CounterFact test records 250-499 with the cleaned keep pool (stop 22).

    python bench/splice_pool_clean.py counterfact-test-default22-250

The 200 + 50 records were first run with the pool before its names lost a clause word read
back from a template ("Henry Cow, that"); the 64 records whose 30 keep subjects the cleaning
changed were run again (counterfact-test-pool-clean-affected, records.json: those records);
every other record's keep subjects, hence its edit, are the same. This joins them and prints
the figures against the unedited model and stop 21's default.
"""

import json
import math
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftedit import paths

R = Path(__file__).resolve().parent / "results"


def rows(d, m):
    return {r["case_id"]: r for r in json.loads((R / d / "results.json").read_text())["rows"][m]}


base = {
    **rows("counterfact-test-ks30-r3-250", "default-ks30-r3"),
    **rows("counterfact-test-ks30-r3-350", "default-ks30-r3"),
    **rows("counterfact-test-default22-450", "default"),
}
fix = rows("counterfact-test-pool-clean-affected", "default")
recs = json.loads((paths.data_dir() / "counterfact-sample.json").read_text())
order = [r["case_id"] for r in recs[250:500]]
assert set(order) == set(base) and set(fix) <= set(base), (len(base), len(fix))
out = [fix.get(c, base[c]) for c in order]
un = rows("counterfact-test-unedited", "unedited")
old = {
    **rows("counterfact-test-tparts-250", "default-tparts"),
    **rows("counterfact-test-tparts-350", "default-tparts"),
}


def summary(ids, d):
    return {
        k: round(100 * st.mean(d[i][k] for i in ids), 2)
        for k in ("efficacy", "paraphrase", "neighborhood")
    }


new = {r["case_id"]: r for r in out}
for name, ids in (("250-449", order[:200]), ("250-499", order)):
    print(name, "new", summary(ids, new), "unedited", summary(ids, un))
ids = order[:200]
d = [100 * (new[i]["neighborhood"] - old[i]["neighborhood"]) for i in ids]
print(
    f"250-449 vs stop 21 default: +{st.mean(d):.2f} (SE {st.stdev(d) / math.sqrt(len(d)):.2f}); old",
    summary(ids, old),
)


def ok(x):
    return x is not None and not (isinstance(x, float) and math.isnan(x))


g = [i for i in ids if ok(new[i].get("gen_entropy"))]
print(
    "entropy on",
    len(g),
    "records:",
    round(st.mean(new[i]["gen_entropy"] for i in g), 3),
    "unedited",
    round(st.mean(un[i]["gen_entropy"] for i in g), 3)
    if all(ok(un[i].get("gen_entropy")) for i in g)
    else "n/a",
)
print("changed records:", len(fix), "median steps", st.median(r["steps"] for r in out))
if len(sys.argv) > 1:
    o = R / sys.argv[1]
    o.mkdir(exist_ok=True)
    (o / "results.json").write_text(
        json.dumps(
            {
                "title": "CounterFact test, records 250-499, today's default with the cleaned keep pool (spliced; see README.md)",
                "rows": {"default": out},
            },
            indent=1,
        )
    )
    (o / "README.md").write_text(
        __doc__ + "\nBuilt from counterfact-test-ks30-r3-250, -350, counterfact-test-default22-450"
        " and counterfact-test-pool-clean-affected.\n"
    )
