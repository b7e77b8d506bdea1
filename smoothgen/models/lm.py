"""Word-level Penn Treebank language model (GPT-2-style decoder) and its SmoothGen adapter.

The condition of the LM is a prompt of ``k`` tokens. SmoothGen noises the prompt's **token
embeddings** (rows of the tied input/output matrix ``wte``), shape ``[k, d]``; the model then adds
its learned *position* embeddings itself (``inputs_embeds`` path of ``GPT2LMHeadModel``), so the
noise never touches positions. Continuations are token ids, decoded greedily or by sampling.

Perplexity (:func:`stream_perplexity`) follows the standard setup for fixed-context models: the
token stream (with one ``<eos>`` per sentence) is cut into consecutive, non-overlapping windows of
``context`` tokens; each window predicts its next ``context`` tokens with the context reset at the
window start, and all ``N − 1`` next-token predictions of the stream are scored:
``ppl = exp(−(1/(N−1)) Σ_i log p(x_{i+1} | x_{w(i)..i})``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from smoothgen.data import Vocabulary
from smoothgen.models.checkpoints import CheckpointError, checkpoint_root, load_weights, sha256_file, train_hint

__all__ = ["LMConfig", "LMGenerator", "build_lm", "load_lm", "stream_perplexity", "vocab_path"]

_CACHE_KWARG = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"
"""Name of the KV-cache argument (transformers renamed ``past_key_values`` to ``cache`` in 5.x)."""


@dataclass(frozen=True)
class LMConfig:
    """Architecture of the GPT-2-style LM (weights of the input and output embeddings are tied).

    Attributes
    ----------
    vocab_size, n_positions, n_embd, n_layer, n_head
        Vocabulary size, maximum sequence length (prompt + continuation), width, depth, heads.
    dropout
        Residual, embedding and attention dropout (training only).
    """

    vocab_size: int = 10_000
    n_positions: int = 128
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.n_positions, self.n_embd, self.n_layer, self.n_head) < 1:
            raise ValueError("all LMConfig sizes must be >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown LMConfig keys: {sorted(unknown)}")
        return cls(**d)


def build_lm(config: LMConfig, eos_id: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised ``GPT2LMHeadModel`` for ``config`` (tied embeddings)."""
    hf = GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                    n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout,
                    embd_pdrop=config.dropout, attn_pdrop=config.dropout, bos_token_id=eos_id,
                    eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=True)
    return GPT2LMHeadModel(hf)


class LMGenerator:
    """SmoothGen adapter: noisy prompt embeddings ``[B, k, d]`` → continuation ids ``[B, T]``.

    Parameters
    ----------
    model
        A trained ``GPT2LMHeadModel`` (put in eval mode; runs on its own device).
    vocab
        The PTB vocabulary (``len(vocab) == model.config.vocab_size``).
    steps
        Continuation length ``T``.
    mode
        ``"greedy"`` (argmax; the generator is unused) or ``"sample"`` (``torch.multinomial`` over
        ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits, drawn from the
        passed generator).
    temperature, top_k
        Sampling parameters (``temperature > 0``; ``top_k=None`` = full vocabulary).
    """

    def __init__(self, model: GPT2LMHeadModel, vocab: Vocabulary, steps: int = 20, mode: str = "greedy",
                 temperature: float = 1.0, top_k: int | None = None) -> None:
        if len(vocab) != model.config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} words but the model {model.config.vocab_size}")
        if mode not in ("greedy", "sample"):
            raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not temperature > 0 or (top_k is not None and not 1 <= top_k <= len(vocab)):
            raise ValueError(f"need temperature > 0 and top_k in [1, {len(vocab)}] or None")
        self.model, self.vocab, self.steps, self.mode = model.eval(), vocab, steps, mode
        self.temperature, self.top_k = float(temperature), top_k
        self.card: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.n_embd)

    def token_embeddings(self) -> Tensor:
        """The whole token-embedding table ``[V, d]`` (``wte``, detached): the codebook of a projection front-end."""
        return self.model.transformer.wte.weight.detach()

    def prompt_embeddings(self, prompt_ids: Tensor | list[int]) -> Tensor:
        """Token embeddings ``[k, d]`` (rows of ``wte``; no position embeddings) of ``prompt_ids [k]``."""
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device)
        if ids.ndim != 1 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= len(self.vocab):
            raise ValueError(f"prompt_ids must be a non-empty 1-D list of ids in [0, {len(self.vocab)})")
        with torch.no_grad():
            return self.model.transformer.wte(ids).detach().clone()

    def _check_embeds(self, embeds: Tensor, extra: int) -> None:
        if not isinstance(embeds, Tensor) or embeds.ndim != 3 or embeds.shape[2] != self.embedding_dim:
            raise ValueError(f"prompt embeddings must be a float tensor [B, k, {self.embedding_dim}]")
        if not embeds.is_floating_point():
            raise ValueError(f"prompt embeddings must be floating point, got {embeds.dtype}")
        if embeds.device != self.device:
            raise ValueError(f"embeddings are on {embeds.device} but the model is on {self.device}")
        if embeds.shape[1] + extra > self.model.config.n_positions:
            raise ValueError(f"prompt length {embeds.shape[1]} + {extra} tokens exceeds n_positions="
                             f"{self.model.config.n_positions}")

    def next_token_logits(self, prompt_embeds: Tensor, prefix: Tensor) -> Tensor:
        """Next-token logits ``[B, V]`` after noisy prompt embeddings ``[B, k, d]`` and clean prefix ids ``[B, t]``.

        The prefix enters through its clean token embeddings. Differentiable in ``prompt_embeds``
        (no ``inference_mode`` here).
        """
        self._check_embeds(prompt_embeds, prefix.shape[1])
        if prefix.ndim != 2 or prefix.shape[0] != prompt_embeds.shape[0]:
            raise ValueError(f"prefix must be [B={prompt_embeds.shape[0]}, t] token ids, got shape {tuple(prefix.shape)}")
        wte = self.model.transformer.wte
        x = torch.cat([prompt_embeds.to(wte.weight.dtype), wte(prefix.to(self.device))], dim=1)
        return self.model(inputs_embeds=x).logits[:, -1].float()

    def next_token(self, prompt_embeds: Tensor, prefix: Tensor) -> Tensor:
        """Greedy next token ``[B]`` (argmax of :meth:`next_token_logits`)."""
        with torch.inference_mode():
            return self.next_token_logits(prompt_embeds, prefix).argmax(dim=-1)

    def _pick(self, logits: Tensor, generator: torch.Generator) -> Tensor:
        if self.mode == "greedy":
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)

    def __call__(self, embeddings: Tensor, generator: torch.Generator) -> Tensor:
        """Continuations ``[B, T]`` (int64) of prompt embeddings ``[B, k, d]``, one KV-cached pass per step.

        Embeddings are cast to the model's dtype. In ``"sample"`` mode every token is drawn with
        ``torch.multinomial(..., generator=generator)``; greedy decoding ignores ``generator``.
        """
        self._check_embeds(embeddings, self.steps - 1)
        if self.mode == "sample" and generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device} but the model runs on {self.device}")
        out = torch.empty((embeddings.shape[0], self.steps), dtype=torch.long, device=self.device)
        cache = {_CACHE_KWARG: DynamicCache()}  # filled in place by every forward pass
        with torch.inference_mode():
            embeds = embeddings.to(self.model.transformer.wte.weight.dtype)
            logits = self.model(inputs_embeds=embeds, use_cache=True, **cache).logits[:, -1]
            for step in range(self.steps):
                out[:, step] = self._pick(logits, generator)
                if step + 1 < self.steps:
                    logits = self.model(input_ids=out[:, step : step + 1], use_cache=True, **cache).logits[:, -1]
        return out

    def embedding_geometry(self, chunk: int = 1024) -> dict[str, float]:
        """Scale of the token-embedding space: ``dim``, ``mean_norm`` (mean ‖wte_v‖ over the
        vocabulary), ``nn_median`` / ``nn_min`` (median / min over v of ``min_{u≠v} ‖wte_u − wte_v‖₂``).

        Squared distances are computed in float64 as ``‖a‖² + ‖b‖² − 2 a·b`` (clamped at 0).
        """
        w = self.model.transformer.wte.weight.detach().double().cpu()
        sq = (w * w).sum(dim=1)
        nearest = []
        for i in range(0, w.shape[0], chunk):
            d2 = sq[i : i + chunk, None] + sq[None, :] - 2 * w[i : i + chunk] @ w.T
            d2[torch.arange(d2.shape[0]), torch.arange(i, i + d2.shape[0])] = float("inf")
            nearest.append(d2.min(dim=1).values.clamp_min(0).sqrt())
        nn_dist = torch.cat(nearest).numpy()
        return {"dim": int(w.shape[1]), "mean_norm": float(w.norm(dim=1).mean()),
                "nn_median": float(np.median(nn_dist)), "nn_min": float(nn_dist.min())}


def stream_perplexity(model: GPT2LMHeadModel, tokens: Tensor, context: int = 128,
                      batch_size: int = 64) -> dict[str, float]:
    """Perplexity of ``model`` on a token stream (setup in the module docstring).

    Returns ``perplexity``, ``nll`` (mean negative log-likelihood in nats), ``predictions``
    (= N − 1) and ``context``. Runs in eval mode under ``inference_mode`` on the model's device.
    """
    if tokens.ndim != 1 or tokens.numel() < 2:
        raise ValueError("tokens must be a 1-D stream of at least 2 ids")
    if not 1 <= context <= model.config.n_positions:
        raise ValueError(f"context must be in [1, {model.config.n_positions}], got {context}")
    device = model.transformer.wte.weight.device
    model.eval()
    starts = list(range(0, tokens.numel() - 1, context))
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            total_b, count_b = _window_nll(model, tokens, starts[i : i + batch_size], context, device)
            total, count = total + total_b, count + count_b
    nll = total / count
    return {"perplexity": math.exp(nll), "nll": nll, "predictions": count, "context": context}


def windows(tokens: Tensor, starts: list[int], context: int) -> tuple[Tensor, Tensor]:
    """Inputs ``tokens[s : s + context]`` and next-token targets (``-100`` past the end), ``[len(starts), context]``."""
    n = tokens.numel()
    inputs = torch.zeros((len(starts), context), dtype=torch.long)
    targets = torch.full((len(starts), context), -100, dtype=torch.long)
    for row, s in enumerate(starts):
        length = min(context, n - 1 - s)
        inputs[row, :length] = tokens[s : s + length]
        targets[row, :length] = tokens[s + 1 : s + 1 + length]
    return inputs, targets


def _window_nll(model: GPT2LMHeadModel, tokens: Tensor, starts: list[int], context: int,
                device: torch.device) -> tuple[float, int]:
    """Summed NLL and count over windows ``tokens[s : s + context]`` predicting the next token each."""
    inputs, targets = windows(tokens, starts, context)
    logits = model(input_ids=inputs.to(device)).logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100, reduction="sum")
    return float(nll), int((targets >= 0).sum())


def vocab_path(name: str, root: str | Path | None = None) -> Path:
    """The vocabulary file (one word per line, id = line number) stored beside LM checkpoint ``name``."""
    return checkpoint_root(root) / f"{name}.vocab.txt"


def load_lm(name: str = "lm_ptb", root: str | None = None, device: Any = None, **adapter_kwargs: Any) -> LMGenerator:
    """Load a trained LM (weights and vocabulary sha256-verified) as an :class:`LMGenerator`.

    ``adapter_kwargs`` go to :class:`LMGenerator` (``steps``, ``mode``, ``temperature``, ``top_k``).
    The card is available as ``generator.card``.

    Raises
    ------
    CheckpointError
        Missing or corrupted weights or vocabulary (the message says how to train them).
    """
    state, card = load_weights(name, root)
    path = vocab_path(name, root)
    if not path.is_file() or sha256_file(path) != card.get("vocab_sha256"):
        raise CheckpointError(f"vocabulary {path} is missing or does not match its card; "
                              f"retrain with `{train_hint(name)}`")
    vocab = Vocabulary(tuple(path.read_text(encoding="utf-8").split("\n")))
    config = LMConfig.from_dict(card["config"]["architecture"])
    model = build_lm(config, eos_id=vocab.eos_id)
    model.load_state_dict(state)
    generator = LMGenerator(model.to(device or "cpu"), vocab, **adapter_kwargs)
    generator.card = card
    return generator
