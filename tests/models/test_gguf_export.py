"""spectune's GGUF writer, read back by the other side: transformers' GGUF loader (weights,
config, tokenizer) and ``spectune watch``, for six architectures and three tensor types."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from spectune.errors import SpectuneError
from tests import archs
from tests.archs import ARCHS, COMMON, arch_folder, arch_gguf, tiny_arch_model

#: largest |logit difference| / largest |logit| measured on these models, per type: f32
#: 0 (bit-exact), f16 <= 0.0026, q8_0 <= 0.077 (phi3); the bounds leave a margin
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 0.15}

#: text the tokenizer must split alike before and after (digits, spaces, tabs, accents,
#: special tokens)
TEXTS = (
    "Hello world, 1234 + 5678 = ?",
    "<|im_start|>user\n  héllo\tthere<|im_end|>\n",
    " leading  spaces 3.14159 and émojis 🙂",
)


@pytest.fixture(scope="module")
def arch_root(tmp_path_factory) -> Path:
    return archs.arch_root(tmp_path_factory)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def _ids(tokenizer) -> torch.Tensor:
    chat = [{"role": "user", "content": "What is 12 + 30?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text).input_ids])


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def _slow_but_llama(archs: tuple[str, ...]) -> list:
    """The architectures as parameters, all but Llama's slow: loading a GGUF file parses its
    98,000 token and merge strings twice (about 8 s per file here)."""
    return [pytest.param(a, marks=() if a == "llama" else pytest.mark.slow) for a in archs]


@pytest.mark.parametrize("arch", _slow_but_llama(ARCHS))
def test_f16_file_loads_back_with_the_same_logits_and_tokenizer(arch, arch_root, smol_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = arch_folder(arch_root, arch, smol_tokenizer)
    path = arch_gguf(arch_root, arch, smol_tokenizer, "f16")
    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = _ids(smol_tokenizer)
    ref = _logits(source, ids)
    back = _load(path)
    assert back.config.num_hidden_layers == 2 and back.config.hidden_size == 64
    assert back.config.num_key_value_heads == 2
    assert back.config.tie_word_embeddings == source.config.tie_word_embeddings
    error = _relative_error(_logits(back, ids), ref)
    assert 1e-6 < error < TOLERANCE["f16"], error  # float16 rounding shows, within tolerance
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        assert tokenizer(text).input_ids == smol_tokenizer(text).input_ids, text
    assert tokenizer.chat_template == smol_tokenizer.chat_template
    assert tokenizer.eos_token == smol_tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == smol_tokenizer.bos_token
    assert tokenizer.pad_token == smol_tokenizer.pad_token


def _type_cases() -> list:
    """q8_0 for Llama and for the two architectures whose tensors the writer reshapes
    (Gemma 3's norms stored as 1 + w, Phi-3's fused projections), f32 for Llama (a tuned
    run's f32 export is read back in tests/tuning/test_export.py); Mistral, Qwen2 and Qwen3
    quantize as Llama does and are read back in f16 above (each file load parses ~98,000
    token and merge strings: ~12 s); all but Llama's q8_0 are slow."""
    cases = [(arch, "q8_0") for arch in ("llama", "gemma3", "phi3")] + [("llama", "f32")]
    return [
        pytest.param(
            arch, qtype, marks=() if (arch, qtype) == ("llama", "q8_0") else pytest.mark.slow
        )
        for arch, qtype in cases
    ]


@pytest.mark.parametrize(("arch", "qtype"), _type_cases())
def test_each_type_loads_back_within_its_tolerance(arch, qtype, arch_root, smol_tokenizer):
    import gguf

    folder = arch_folder(arch_root, arch, smol_tokenizer)
    path = arch_gguf(arch_root, arch, smol_tokenizer, qtype)
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = _ids(smol_tokenizer)
    error = _relative_error(_logits(_load(path), ids), _logits(source, ids))
    assert error <= TOLERANCE[qtype], error
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == qtype.upper()
    assert types["output_norm.weight"] == "F32"  # vectors stay float32
    if qtype == "q8_0":
        assert error > 1e-4  # quantized for real


def test_llama_qk_rows_are_in_llama_cpp_rotary_order(arch_root, smol_tokenizer):
    """The file's q rows are the model's with each head's halves interleaved (what llama.cpp
    expects and the loader undoes), read with gguf's own reader."""
    import gguf
    from transformers import AutoModelForCausalLM

    folder = arch_folder(arch_root, "llama", smol_tokenizer)
    path = arch_gguf(arch_root, "llama", smol_tokenizer, "f32")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()  # (4 heads * 16, 64)
    stored = tensors["blk.0.attn_q.weight"].data
    assert stored.shape == q.shape
    # head 1, pair i = 3: file rows 16 + 6 and 16 + 7 are model rows 16 + 3 and 16 + 8 + 3
    assert (stored[22] == q[19]).all() and (stored[23] == q[27]).all()
    assert not (stored == q).all()


@pytest.mark.slow
def test_gemma3_norms_are_stored_as_one_plus_w(arch_root, smol_tokenizer):
    import gguf
    from transformers import AutoModelForCausalLM

    folder = arch_folder(arch_root, "gemma3", smol_tokenizer)
    path = arch_gguf(arch_root, "gemma3", smol_tokenizer, "f32")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tensors = {t.name: t.data for t in gguf.GGUFReader(path).tensors}
    for name, module in (
        ("blk.1.attn_q_norm.weight", model.model.layers[1].self_attn.q_norm),
        ("blk.0.post_ffw_norm.weight", model.model.layers[0].post_feedforward_layernorm),
        ("output_norm.weight", model.model.norm),
    ):
        weight = module.weight.detach()
        assert weight.std() > 0.05  # not the constant init: the +1 is seen on real values
        assert torch.equal(torch.from_numpy(tensors[name].copy()), weight + 1), name


def _details(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "details.csv").open() as fh:
        return {row["longname"]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize("arch", _slow_but_llama(("llama", "gemma3", "phi3")))
def test_watch_reads_the_file_as_it_reads_the_folder(arch, arch_root, smol_tokenizer, tmp_path):
    """``spectune watch FILE.gguf`` finds every matrix of the folder with the same spectra, to float16 rounding; the q/k row order changes no singular value."""
    import gguf

    from spectune.cli.main import main

    folder = arch_folder(arch_root, arch, smol_tokenizer)
    path = arch_gguf(arch_root, arch, smol_tokenizer, "f16")
    assert main(["watch", str(folder), "--out", str(tmp_path / "f"), "--no-progress"]) == 0
    assert main(["watch", str(path), "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    from_folder, from_file = _details(tmp_path / "f"), _details(tmp_path / "g")
    names = gguf.get_tensor_name_map(
        {"llama": gguf.MODEL_ARCH.LLAMA, "gemma3": gguf.MODEL_ARCH.GEMMA3,
         "phi3": gguf.MODEL_ARCH.PHI3}[arch], 2
    )  # fmt: skip
    matched = 0
    for longname, row in from_folder.items():
        # spectune names a llama file's matrices as transformers does, the others as llama.cpp
        other = from_file.get(longname) or from_file[names.get_name(longname)]
        assert (row["N"], row["M"]) == (other["N"], other["M"])
        for column in ("spectral_norm", "stable_rank", "log_norm"):
            assert float(other[column]) == pytest.approx(float(row[column]), rel=2e-3), column
        assert float(other["alpha"]) == pytest.approx(float(row["alpha"]), abs=0.05)
        matched += 1
    assert matched == len(from_file) >= 2 * 4 + 1  # the blocks' matrices, and the embeddings


# --------------------------------------------------------------------------- refusals


def test_unknown_architecture_names_the_supported_ones(smol_tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from spectune.models.gguf_export import write_gguf

    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(smol_tokenizer))
    )
    with pytest.raises(
        SpectuneError, match=r"'gpt2'.*gemma3_text, llama, mistral, phi3, qwen2, qwen3"
    ):
        write_gguf(model, smol_tokenizer, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_a_shape_the_loader_cannot_read_back_is_refused(smol_tokenizer, tmp_path):
    """Qwen3 with head_dim 16: the loader reads no head size for qwen3 (it would take 128)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from spectune.models.gguf_export import write_gguf

    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(smol_tokenizer), head_dim=16, **COMMON))
    with pytest.raises(SpectuneError, match=r"head_dim=128 back .* has 16"):
        write_gguf(model, smol_tokenizer, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_bad_type_and_small_embeddings_are_refused(smol_tokenizer, tmp_path):
    from spectune.models.gguf_export import write_gguf

    model = tiny_arch_model("llama", 1000)
    with pytest.raises(SpectuneError, match=r"--type 'q4_k'.*f32, f16, q8_0"):
        write_gguf(model, smol_tokenizer, tmp_path / "m.gguf", qtype="q4_k")
    with pytest.raises(SpectuneError, match=r"49152 tokens .* model embeds 1000"):
        write_gguf(model, smol_tokenizer, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_the_split_pattern_travels_and_a_sentencepiece_vocabulary_is_refused(
    smol_tokenizer, tmp_path
):
    """A Qwen2-style split is named ``qwen2`` in the file, so the loaded tokenizer splits text
    as the source does (GPT-2's pattern splits a run of newlines otherwise)."""
    import copy

    import gguf
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from spectune.models.gguf_export import write_gguf

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS["qwen2"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    text = "a\n\n\nb = 12345"
    assert tokenizer(text).input_ids != smol_tokenizer(text).input_ids  # the split matters
    path = tmp_path / "q" / "m.gguf"
    write_gguf(tiny_arch_model("qwen2", len(tokenizer)), tokenizer, path, qtype="f16")
    assert gguf.GGUFReader(path).get_field("tokenizer.ggml.pre").contents() == "qwen2"
    back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert back(text).input_ids == tokenizer(text).input_ids

    sentencepiece = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0))
    )
    with pytest.raises(SpectuneError, match=r"byte-level BPE.*Unigram model"):
        write_gguf(tiny_arch_model("llama", 1000), sentencepiece, tmp_path / "s.gguf")
    assert not (tmp_path / "s.gguf").exists()
