"""Helpers of `gboost bench` whose mistakes would skew the table without failing a run."""
import io

from gboost.bench import Row, forget_cached_prefixes, print_table
from gboost.sampling import SamplingParams
from gboost.testing import tiny_engine


def test_forget_cached_prefixes_makes_a_repeated_run_compute_again():
    eng = tiny_engine({"slm": 1}, num_blocks=64)
    runner, prompt = eng.role("slm").runner, list(range(40))
    params = SamplingParams(temperature=0.0, max_tokens=4)

    def computed():
        before = runner.tokens_computed
        eng.generate([prompt], params)
        return runner.tokens_computed - before
    first = computed()
    assert computed() < first                    # the repeat found the prompt's full blocks cached
    forget_cached_prefixes(eng.cache)
    assert eng.cache.blocks.num_free() == 64 and not eng.cache.blocks.by_hash
    assert computed() == first                   # ... and after forgetting, computes them again
    eng.cache.check_refcounts()


def test_table_has_one_aligned_line_per_row():
    out = io.StringIO()
    rows = [Row("gboost: s/request, 1 at a time", "1.2 s", "3.4 s", "2.83x", "8/8"), Row("decode", "10")]
    print_table(rows, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + len(rows) and len({len(x) for x in lines}) == 1
    assert lines[2].split("|")[1:-1] == [" gboost: s/request, 1 at a time ", " 1.2 s  ",
                                         " 3.4 s                ", " 2.83x ", " 8/8          "]
