"""Self-speculative decoding with Medusa, Hydra or Hydra++ heads over a draft tree.

Each step reads as five named steps:
  propose  the heads draft a token for every tree node, from the hidden state of
           the last accepted position (heads never run at other tree nodes);
  verify   one forward of the whole tree through the tree-attention op;
  accept   the longest path the base model agrees with (greedy: token equality
           with the base argmax; typical: Medusa's entropy-adaptive threshold,
           approximate; sampling: recursive rejection, distribution-preserving);
  commit   the accepted nodes' K/V move to contiguous cache slots (kv_commit);
           Hydra++ heads' prefix layer appends the accepted nodes' hidden states.
Prefill runs once before the first step.

Node 0 of the tree is the root: the token the base model already chose, not yet
in the cache. A step emits the accepted drafted tokens plus one bonus token from
the base model, which becomes the next step's root.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import torch

from entmtp import ops
from entmtp.decode.accept import StepOutcome, VerifyConfig, accept_by_rejection, read_beside
from entmtp.decode.autoregressive import check_prompt_fits, pick_token
from entmtp.decode.drafting import draft_blocks_for, draft_head_for
from entmtp.decode.types import GenerationResult, SamplingConfig, StepRecord, TokenCallback
from entmtp.errors import UsageError
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.heads.prefix import HydraPrefixHeads, PrefixRunner
from entmtp.heads.shortlist import DraftVocab
from entmtp.model.llama import KVCache, LlamaModel
from entmtp.schedule.policies import DRAFT, TreePolicy
from entmtp.schedule.signals import DEFAULT_WINDOW, Signals, SignalTracker
from entmtp.trees.tree import Tree, TreeBuffers, medusa_candidates

# Guesses per head: the widest a tree can branch below a node. Upstream Medusa's and
# Hydra's default, and what the shipped trees and banks were built with.
DEFAULT_TOP_K = 10


class SpeculativeDecoder:
    def __init__(self, model: LlamaModel, heads: MedusaHeads | HydraHeads, tree: Tree,
                 verify: VerifyConfig = VerifyConfig(), top_k: int = DEFAULT_TOP_K, method: Optional[str] = None,
                 policy: Optional[TreePolicy] = None, signal_window: float = DEFAULT_WINDOW,
                 draft_vocab: Optional[DraftVocab] = None):
        self.model = model
        self.heads = heads.to(device=model.device, dtype=model.dtype).eval()
        self.verify_config = verify
        self.top_k = top_k
        self.method = method or heads.kind
        self._cache: Optional[KVCache] = None
        self.policy = policy
        self.bank = None  # the tree bank the policy came from (entmtp runs), for reports
        # Called with each step's hidden_last [H] before its tree is chosen (calibration
        # collects them to fit the probe); None in normal runs.
        self.on_step_hidden: Optional[Callable[[torch.Tensor], None]] = None
        self.signals = SignalTracker(signal_window)
        # Hydra++: the prefix layer and its own KV cache; the heads read its output, not h_t.
        self.prefix = PrefixRunner(self.heads.prefix, model) if isinstance(self.heads, HydraPrefixHeads) else None
        self._fitted: dict[tuple[Tree, int], Tree] = {}  # (tree, room) -> its first `room` nodes (fit_context)
        # Drafting projects onto draft_lm_head [N, H]: the base LM head, or its rows for a
        # draft vocabulary (entmtp.heads.shortlist); draft_ids [N] maps a row back to its token.
        self.draft_vocab = draft_vocab
        self.draft_lm_head, self.draft_ids = model.lm_head, None
        if draft_vocab is not None:
            if not heads.shared_lm_head:
                raise UsageError("a draft vocabulary needs heads that share the base model's LM head")
            if max(draft_vocab.ids) >= model.config.vocab_size or len(draft_vocab.ids) < top_k:
                raise UsageError(f"the draft vocabulary must hold >= top_k={top_k} ids below the model's "
                                 f"vocabulary size {model.config.vocab_size}")
            self.draft_ids = torch.tensor(draft_vocab.ids, dtype=torch.long, device=model.device)
        self.draft_lm_head = draft_head_for(model, heads, self.draft_ids)
        self.draft_blocks = draft_blocks_for(model, self.heads)  # Hydra: Q8_0 first blocks, or None
        if policy is not None:
            if policy.hindsight and verify.mode != "greedy":
                raise UsageError(f"the {policy.name} policy is defined for greedy decoding only")
            trees = list(policy.trees) + ([policy.verify_tree] if policy.hindsight else [])
            for member in trees:  # every buffer is built here, once: a switch is a pointer swap
                member.check_compatible(heads.n_heads, top_k)
                member.buffers(model.device, top_k)
            tree = policy.verify_tree if policy.hindsight else policy.trees[0]
            if policy.probe is not None:
                policy.probe = policy.probe.to(device=model.device, dtype=torch.float32)
        tree.check_compatible(heads.n_heads, top_k)
        self.set_tree(tree)

    def set_tree(self, tree: Tree) -> None:
        """Switch trees: a pointer swap to buffers built once per tree and device."""
        self.tree = tree
        self.buffers: TreeBuffers = tree.buffers(self.model.device, self.top_k)

    # ------------------------------------------------------------------ steps
    def prefill(self, cache: KVCache, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt [1, P] -> (logits [V] and hidden [H] at the last prompt position, and the
        heads' input there [H]: that hidden state, or Hydra++'s prefix layer output)."""
        positions = torch.arange(prompt.shape[1], device=prompt.device).unsqueeze(0)
        hidden, logits = self.model(prompt, positions, cache, 0, logits_rows=slice(-1, None))
        head_input = hidden[0, -1] if self.prefix is None else self.prefix.start(hidden[0], cache.capacity)
        return logits[0, -1], hidden[0, -1], head_input

    def advance_heads(self, hidden: torch.Tensor, slots: torch.Tensor, cache_len: int) -> torch.Tensor:
        """The heads' input for the next step: hidden [T, H] of this step's verify forward,
        slots int64 [n] its accepted nodes (root first) committed at cache_len.. -> [H].
        Hydra++: the prefix layer appends those n positions to its own cache."""
        if self.prefix is None:
            return hidden[slots[-1]]
        return self.prefix.advance(hidden[slots], cache_len)

    @torch.inference_mode()
    def peek(self, root: torch.Tensor, head_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head output every drafting tree starts from, before the tree is chosen:
        Medusa: all heads' (ids, probs) [n_heads, top_k]; Hydra: head 0 on the root
        path, [1, top_k]. Row 0 column 0 of probs is head 0's top-1 probability.
        head_input [H]: see prefill."""
        model = self.model
        if isinstance(self.heads, MedusaHeads):
            ids, probs = self.heads.propose(head_input, self.draft_lm_head, self.top_k)
        else:
            ids, probs = self.heads.propose_level(head_input, root.reshape(1, 1).to(torch.long), model.embed,
                                                  self.draft_lm_head, self.top_k, self.draft_blocks)
        return self._token_ids(ids), probs

    def _token_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of draft_lm_head -> token ids (the identity without a draft vocabulary)."""
        return rows if self.draft_ids is None else self.draft_ids[rows]

    @torch.inference_mode()
    def propose(self, root: torch.Tensor, head_input: torch.Tensor,
                peeked: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draft a token for every node (head_input [H]: see prefill) -> (tokens int64 [T], node 0 = root;
        confidence f32 [2]: head 0's top-1 probability at the root and the greedy
        path value, the product of top-1 probabilities down the all-0 chain; None
        when nothing is drafted). `peeked`: this root's `peek` output, reused
        instead of running head 0 (or Medusa's heads) again."""
        model, buffers, chain = self.model, self.buffers, self.tree.chain_depth
        if buffers.max_depth == 0:  # root-only tree: nothing to draft, the heads do not run
            return root.reshape(1).to(torch.long), None
        if isinstance(self.heads, MedusaHeads):
            # Head i's top-k at the last accepted position fills every node of depth i+1.
            if peeked is None:
                ids, probs = self.heads.propose(head_input, self.draft_lm_head, self.top_k)
                peeked = self._token_ids(ids), probs
            head_ids, head_probs = peeked
            top1 = head_probs[:, 0]                                      # [n_heads]
            return medusa_candidates(root, head_ids, buffers), torch.stack([top1[0], top1[:chain].prod()])
        # Hydra: level by level, each head reading the tokens on its path so far.
        tokens = torch.empty(buffers.n_nodes, dtype=torch.long, device=model.device)
        tokens[0] = root
        chain_top1 = []
        for depth in range(1, buffers.max_depth + 1):
            parents = buffers.expand_parents[depth - 1]                 # [E]
            if depth == 1 and peeked is not None:  # depth 1 expands the root only: the peek
                child_ids, child_probs = peeked
            else:
                path_ids = tokens[buffers.path_nodes[parents, :depth]]     # [E, depth]
                child_rows, child_probs = self.heads.propose_level(head_input, path_ids, model.embed,
                                                                   self.draft_lm_head, self.top_k,
                                                                   self.draft_blocks)  # [E, top_k]
                child_ids = self._token_ids(child_rows)
            if depth <= chain:  # the all-0 chain's node is the first of its depth: slot 0
                chain_top1.append(child_probs[0, 0])
            tokens[buffers.level_nodes[depth]] = child_ids[buffers.level_parent_slots[depth],
                                                           buffers.level_ranks[depth]]
        top1 = torch.stack(chain_top1) if chain_top1 else None
        return tokens, (None if top1 is None else torch.stack([top1[0], top1.prod()]))

    def verify(self, cache: KVCache, cache_len: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of the tree -> (logits [T, V], hidden [T, H])."""
        buffers = self.buffers
        positions = (buffers.depths + cache_len).unsqueeze(0)
        hidden, logits = self.model(tokens.unsqueeze(0), positions, cache, cache_len,
                                    tree_bits=buffers.tree_bits)
        return logits[0], hidden[0]

    def accept(self, tokens: torch.Tensor, logits: torch.Tensor, base_argmax: torch.Tensor,
               generator: Optional[torch.Generator], per_node: Sequence[torch.Tensor] = (),
               extras: Sequence[torch.Tensor] = ()) -> StepOutcome:
        """tokens [T] drafted; logits [T, V] and base_argmax [T] from the verify forward.

        per_node: [T] tensors whose values at the accepted path's nodes come back
        in outcome.along_path; extras: scalar tensors, back in outcome.extras. In
        greedy mode everything comes back in the step's one device-to-host read."""
        mode = self.verify_config.mode
        if mode == "sample":
            outcome = accept_by_rejection(tokens, logits, self.tree.children, self.verify_config.temperature,
                                          generator)
            return read_beside(outcome, per_node, extras)
        buffers = self.buffers
        if mode == "greedy":
            path, length, bonus = ops.tree_accept(tokens, buffers.parents, base_argmax, buffers.max_depth)
            # One host read: length, bonus, then per path slot (width = max depth + 1, padded
            # with -1) the node, its token and each per-node value; then the extras.
            on_path = path.clamp(min=0)
            columns = [path, tokens[on_path]] + [values[on_path] for values in per_node]
            read = torch.cat([length.view(1), bonus.view(1)] + columns + [e.reshape(1) for e in extras]
                             ).double().tolist()
            n, width = int(read[0]) + 1, path.shape[0]
            blocks = [read[2 + i * width:2 + i * width + n] for i in range(len(columns))]
            path_list = [int(v) for v in blocks[0]]
            emitted = [int(v) for v in blocks[1][1:]] + [int(read[1])]
            return StepOutcome(path_list, bonus, emitted, path[:n], blocks[2:], read[2 + len(columns) * width:])
        cfg = self.verify_config
        scaled = logits.float() / cfg.temperature                            # [T, V]
        entropy = ops.token_entropy(scaled)[0]                               # [T] nats
        parent_rows = scaled[buffers.parents.clamp(min=0)]                   # [T, V]
        drafted_prob = torch.softmax(parent_rows, -1).gather(1, tokens[:, None])[:, 0]
        path, length, _ = ops.tree_accept(tokens, buffers.parents, base_argmax, buffers.max_depth,
                                          draft_probs=drafted_prob, entropy=entropy,
                                          epsilon=cfg.epsilon, alpha=cfg.alpha)
        n = int(length) + 1
        path_list = path[:n].tolist()
        bonus = pick_token(logits[path_list[-1]], SamplingConfig(self.verify_config.temperature), generator)
        outcome = StepOutcome(path_list, bonus, tokens[path_list[1:]].tolist() + [int(bonus)], path[:n])
        return read_beside(outcome, per_node, extras)

    def commit(self, cache: KVCache, cache_len: int, slots: torch.Tensor) -> int:
        """Move the accepted nodes' K/V (slots: int64 [n] node indices, root first, on
        the device) to cache slots cache_len.. ; return the new length."""
        if slots.shape[0] > 1:
            ops.kv_commit(cache.kv, slots + cache_len, cache_len)
        return cache_len + slots.shape[0]

    # --------------------------------------------------------------- the loop
    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: tuple[int, ...],
                 sampling: SamplingConfig = SamplingConfig(),
                 on_tokens: Optional[TokenCallback] = None) -> GenerationResult:
        model, policy = self.model, self.policy
        context = check_prompt_fits(model, len(prompt_ids))
        members = (self.tree,) if policy is None else policy.trees + ((policy.verify_tree,) if policy.hindsight else ())
        widest = max(members, key=lambda t: t.n_nodes)
        if widest.n_nodes > context:
            raise UsageError(f"tree {widest.name!r} has {widest.n_nodes} nodes but the model's context holds only "
                             f"{context} positions; use a smaller tree")
        # The same budget as plain decoding: near the end of the context each step's tree
        # shrinks to what still fits (fit_context), so the output is ar's to the last position.
        budget = min(max_new_tokens, context - len(prompt_ids))
        limit = min(context, len(prompt_ids) + budget + widest.n_nodes)  # cache slots this prompt can touch
        cache = self._cache = model.reuse_cache(self._cache, limit)
        own_tree = self.tree
        generator = sampling.generator(model.device)
        eos = set(eos_ids)
        out: list[int] = []
        records: list[StepRecord] = []

        def emit(new_ids: list[int]) -> bool:
            """Append tokens up to EOS or the budget; True when generation is over."""
            for index, token_id in enumerate(new_ids):
                if token_id in eos or len(out) + index + 1 >= budget:
                    out.extend(new_ids[:index + 1])
                    if on_tokens is not None:
                        on_tokens(new_ids[:index + 1])
                    return True
            out.extend(new_ids)
            if on_tokens is not None:
                on_tokens(new_ids)
            return False

        start = time.perf_counter()
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
        with torch.inference_mode():
            logits, hidden_last, head_input = self.prefill(cache, prompt)
            root = pick_token(logits, sampling, generator)
            # Signals are tracked on every run (a few float ops per step) so that any
            # run's records can be analysed; only a policy acts on them.
            self.signals.reset()
            probe_weights = None if policy is None else policy.probe
            first = [ops.token_entropy(logits.unsqueeze(0))[0][0]]
            if probe_weights is not None:
                first.append(self._probe(probe_weights, hidden_last.unsqueeze(0))[0])
            first = torch.stack(first).tolist()  # the prefill's one read: root entropy (and probe)
            self.signals.observe_entropy(first[0])
            probe_value = first[1] if probe_weights is not None else None
            if policy is not None:
                policy.reset()
        prefill_seconds = time.perf_counter() - start
        cache_len = len(prompt_ids)
        done = emit([int(root)])
        steps = 1
        try:
            while not done:
                done, cache_len, root, hidden_last, head_input, probe_value = self._step(
                    cache, cache_len, limit, root, hidden_last, head_input, probe_value, generator, records, emit)
                steps += 1
        finally:
            self.set_tree(own_tree)  # a fitted subtree lasts one step, a run's tree one run
        if out and out[-1] in eos:
            stop = "eos"
        else:  # as plain decoding says it: the budget was the context's remainder, or the flag
            stop = "max_new_tokens" if budget == max_new_tokens else "context"
        seconds = time.perf_counter() - start
        return GenerationResult(len(prompt_ids), out, steps, seconds, prefill_seconds, self.method,
                                stop, records)

    def _step(self, cache: KVCache, cache_len: int, limit: int, root: torch.Tensor, hidden_last: torch.Tensor,
              head_input: torch.Tensor, probe_value: Optional[float], generator, records: list[StepRecord],
              emit) -> tuple:
        """One step: choose the tree, propose, verify, accept, commit, emit. hidden_last [H]: the
        base hidden state before the root (the probe's and calibration's); head_input: prefill's.
        -> (done, new cache length, next root, its hidden state, the heads' next input, next probe value)."""
        policy = self.policy
        probe_weights = None if policy is None else policy.probe
        step_start = time.perf_counter()
        seen = self.signals.signals()
        if probe_value is not None:
            seen = dataclasses.replace(seen, probe=probe_value)
        if self.on_step_hidden is not None:
            self.on_step_hidden(hidden_last)
        choice = self.choose_tree(seen)
        scheduler_seconds = time.perf_counter() - step_start
        peeked = None
        if choice == DRAFT:  # two-phase policy: head 0 runs first, its confidence picks the tree
            peeked = self.peek(root, head_input)
            peek_done = time.perf_counter()
            choice = policy.refine(float(peeked[1][0, 0]))  # this step's second read: the peek decides
            self.set_tree(policy.trees[choice])
            scheduler_seconds += time.perf_counter() - peek_done
        chosen = self.tree
        self.fit_context(limit - cache_len)
        with torch.inference_mode():
            tokens, confidence = self.propose(root, head_input, peeked)
            logits, hidden = self.verify(cache, cache_len, tokens)
            # One fused pass over the logits: per-node entropy and argmax.
            entropy, base_argmax = ops.token_entropy(logits)[:2]
            # Read with the accepted path, in the same transfer: the root entropy and
            # head confidence (signals), the argmax along the path (the oracle's
            # bonus), and the probe of every node's hidden state (next step's signal).
            per_node = [base_argmax]
            if probe_weights is not None:
                per_node.append(self._probe(probe_weights, hidden))
            extras = [entropy[0]] + ([] if confidence is None else [confidence[0], confidence[1]])
            outcome = self.accept(tokens, logits, base_argmax, generator, per_node, extras)
            if policy is not None and policy.hindsight:
                choice, outcome = self._settle_in_hindsight(outcome, base_argmax)
            head_input = self.advance_heads(hidden, outcome.slots, cache_len)
            cache_len = self.commit(cache, cache_len, outcome.slots)
        done = emit(outcome.emitted)
        root, hidden_last = outcome.bonus, hidden[outcome.path[-1]]
        if probe_weights is not None:
            probe_value = outcome.along_path[1][len(outcome.path) - 1]
        accepted = len(outcome.path) - 1
        observed = outcome.extras
        confidence = observed[1] if len(observed) > 1 else None
        self.signals.observe_entropy(observed[0])
        if self.tree.max_depth > 0:
            self.signals.observe_draft(accepted, confidence)
        fitted = self.tree is not chosen
        # Records name the tree the scheduler chose; a cut at the context's end shows in fitted_nodes.
        tree_name = chosen.name if choice is None or choice < 0 else policy.trees[choice].name
        records.append(StepRecord(
            accepted, tree_name, observed[0], time.perf_counter() - step_start,
            confidence=confidence, path_value=observed[2] if len(observed) > 2 else None,
            scheduler_seconds=None if policy is None else scheduler_seconds,
            modeled_ms=self._modeled_ms(choice, peeked is not None),
            fitted_nodes=self.tree.n_nodes if fitted else None,
            signals=(seen.entropy, seen.accept, seen.confidence, seen.probe),
            accepted_ranks=self.tree.paths[outcome.path[-1] - 1] if accepted else ()))
        if fitted:
            self.set_tree(chosen)  # the next step starts from the whole tree again
        return done, cache_len, root, hidden_last, head_input, probe_value

    def fit_context(self, room: int) -> None:
        """Near the end of the context: swap in this step's tree cut to its first `room`
        nodes. Canonical order puts parents first, so any prefix of the nodes is a tree
        (down to root-only); its nodes keep their indices, paths and ranks."""
        tree = self.tree
        assert room >= 1, room  # generate() keeps room >= 2 while a token is still to come
        if tree.n_nodes <= room:
            return
        key = (tree, room)
        if key not in self._fitted:
            # The name is for messages only; kept short enough for Tree's name check.
            self._fitted[key] = Tree(f"{tree.name[:80]}[:{room}]", tree.paths[:room - 1], tree.metadata)
        self.set_tree(self._fitted[key])

    # ------------------------------------------------------------ tree choice
    @staticmethod
    def _probe(weights: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """weights [H + 1] (bias last) . hidden [N, H] -> [N] on the device: ~N H flops."""
        return hidden.float() @ weights[:-1] + weights[-1]

    def _modeled_ms(self, choice: Optional[int], peeked: bool) -> Optional[float]:
        """The policy's calibrated time for this step's tree (+ the peek when a
        two-phase policy peeked and then drafted nothing); None when unknown."""
        if choice is None or self.policy.step_ms[choice] is None:
            return None
        extra = self.policy.peek_ms if peeked and self.tree.max_depth == 0 else 0.0
        return self.policy.step_ms[choice] + extra

    def choose_tree(self, signals: Optional[Signals]) -> Optional[int]:
        """Ask the policy for this step's tree and swap it in; None without a policy."""
        policy = self.policy
        if policy is None:
            return None
        if policy.hindsight:
            return -1
        choice = policy.choose(signals)
        if choice == DRAFT:
            return choice
        tree = policy.trees[choice]
        if tree is not self.tree:
            self.set_tree(tree)
        return choice

    def _settle_in_hindsight(self, outcome: StepOutcome, base_argmax: torch.Tensor) -> tuple[int, StepOutcome]:
        """Oracle: cut the union tree's accepted path to the best bank tree's share.

        Greedy only, so the kept prefix and its bonus (the base argmax after it)
        are exactly what that tree would have produced from the same state; the
        argmax along the path came back with the step's read (along_path[0])."""
        union = self.tree
        ranks = union.paths[outcome.path[-1] - 1] if len(outcome.path) > 1 else ()
        choice, keep = self.policy.settle(tuple(ranks))
        path = outcome.path[:keep + 1]
        bonus = base_argmax[path[-1]]
        emitted = outcome.emitted[:keep] + [int(outcome.along_path[0][keep])]
        return choice, StepOutcome(path, bonus, emitted, outcome.slots[:keep + 1], outcome.along_path,
                                   outcome.extras)
