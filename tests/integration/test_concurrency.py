"""One cached model serving many sessions: 8 concurrent runs equal their sequential results."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from attnscope.models import run
from tests.parity import tokenizer_state as backend_state

pytestmark = pytest.mark.slow

TEXTS = [
    "The mouse ate the cheese.",
    "Click the mouse twice to open the file.",
    "A cat sat on the warm mat by the door.",
    "Transformers attend to every token.",
    "Padding must not change the result.",
    "Attention heads specialise across layers in surprising ways.",
    "She moved the mouse and the cursor followed.",
    "Short one.",
]


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_eight_concurrent_runs_equal_sequential(request, model):
    lm = request.getfixturevalue(model)
    sequential = [run(lm, t) for t in TEXTS]
    last = lm.spec.n_layers - 1
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(run, lm, t) for t in TEXTS]
        concurrent = [f.result(timeout=300) for f in futures]  # bounded: a deadlock fails, it does not hang
    for seq, con in zip(sequential, concurrent):
        assert con.tokens == seq.tokens and len(con.layers) == lm.spec.n_layers
        np.testing.assert_allclose(con.attention(last, 1), seq.attention(last, 1), atol=1e-6)
        np.testing.assert_allclose(con.hidden(lm.spec.n_layers), seq.hidden(lm.spec.n_layers), atol=1e-4, rtol=1e-5)


ROUNDS = 20  # the race showed up in about every second round of 12 runs on the old tokenizer call


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_left_and_right_padding_at_once_each_get_their_own(request, model):
    """8 threads alternately ask for left- and right-padded runs of the same two texts, 20 rounds: every run
    equals the same run done alone (mask and map), and the shared tokenizer's Rust backend is never switched."""
    lm = request.getfixturevalue(model)
    batch = [TEXTS[1], TEXTS[7]]  # different lengths: the short one is padded
    solo = {side: run(lm, batch, padding_side=side) for side in ("left", "right")}
    assert solo["left"].attention_mask[1][0] == 0 and solo["right"].attention_mask[1][-1] == 0  # the sides differ
    last = lm.spec.n_layers - 1
    before = backend_state(lm.tokenizer)
    sides = ["left", "right"] * 6
    for attempt in range(ROUNDS):
        with ThreadPoolExecutor(max_workers=8) as pool:
            records = [f.result(timeout=300) for f in [pool.submit(run, lm, batch, side) for side in sides]]
        for side, rec in zip(sides, records):
            assert rec.padding_side == side
            assert np.array_equal(rec.attention_mask, solo[side].attention_mask), (
                f"round {attempt + 1}: a {side}-padded run came back with another request's padding"
            )
            np.testing.assert_allclose(rec.attention(last, 0, batch=1), solo[side].attention(last, 0, batch=1), atol=1e-6)
    assert backend_state(lm.tokenizer) == before


def test_models_loaded_at_once_in_several_threads_all_load_whole(tmp_path):
    """from_pretrained swaps class attributes (tie_weights among them) while it runs: overlapping loads used to
    leave tying switched off for the process, and every later load of a tied model failed on meta tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    from attnscope.models import load
    from tests import tiny

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny.config_for("gpt2"))  # GPT-2 ties its head to the embeddings
    model.save_pretrained(tmp_path / "gpt2")
    tiny.bpe_tokenizer().save_pretrained(tmp_path / "gpt2")
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = [f.result(timeout=600) for f in [pool.submit(load, str(tmp_path / "gpt2")) for _ in range(4)]]
    loaded.append(load(str(tmp_path / "gpt2")))  # and one after them
    for lm in loaded:
        head, embeddings = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
        assert head.device.type == "cpu" and head.data_ptr() == embeddings.data_ptr()
        assert lm.spec.verification is not None and lm.spec.verification.passed


def test_pages_opened_at_once_on_a_fresh_server_import_cleanly():
    """app.py imports ui.preload before any page, and ui.preload imports every module a page imports: then the
    first session imports them all while the others wait on that one module's lock. The load benchmark hit the race
    this closes (ImportError for transformers' lazy names, and a half-initialised models module, when 8 sessions
    opened pages at once on a busy 2-core machine); it is timing-dependent, so besides 8 sessions importing at once
    this checks what makes it impossible: nothing a page imports is left for the page to import first."""
    import ast
    import subprocess
    import sys

    from tests.conftest import ROOT

    lines = []
    for page in sorted((ROOT / "ui").glob("*.py")):
        for node in ast.parse(page.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                lines.append(ast.unparse(node))
    script = "\n".join(
        [
            "import threading, traceback",
            "errors = []",
            "barrier = threading.Barrier(8)",
            "def session():",
            "    barrier.wait()",
            "    try:",
            "        import attnscope.ui.preload",
            *[f"        {line}" for line in lines],
            "    except Exception:",
            "        errors.append(traceback.format_exc(limit=1))",
            "threads = [threading.Thread(target=session) for _ in range(8)]",
            "[t.start() for t in threads]",
            "[t.join() for t in threads]",
            "print(len(errors)); print(''.join(errors[:1]))",
        ]
    )
    app = (ROOT / "ui" / "app.py").read_text(encoding="utf-8")  # the entry both `make run` and `attnscope serve` run
    assert app.index("import attnscope.ui.preload") < app.index("st.navigation")
    modules = sorted({line.split()[1] for line in lines if line.startswith("from ") and not line.startswith("from streamlit")})
    check = f"import sys, attnscope.ui.preload; missing = [m for m in {modules!r} if m not in sys.modules]; print(missing)"
    covered = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert covered.stdout.strip() == "[]", covered.stdout + covered.stderr[-1000:]
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "0", out.stdout
