"""A GRPO step's batch: which prompts, their G completions each, and the completions' rewards.

    sample_groups       sample G completions for each prompt (keyed by seed, step, stream position),
                        decode them, score them with the rewards -> Groups
    Groups.select/join  keep some groups / put groups of several sampling rounds together
    fill_with_signal    dynamic sampling (DAPO, arXiv 2503.14476, section 3.2): drop the groups
                        whose rewards are all equal (their advantages are 0: no gradient) and
                        sample new prompts in their place, until the step holds B groups with
                        signal or a cap of extra rounds is reached; then it trains on what it has
    round_stats         the same counts for a step without dynamic sampling
    sample_step         the step's groups, as the loop asks for them: uniform prompts or the
                        curriculum's (grpo/curriculum.py), one round or dynamic sampling

Under torchrun each rank samples its contiguous share of every round's prompts; how many groups
with signal the ranks found is summed, so every rank stops after the same round, and the first B of
them in (round, rank, prompt) order are kept: the step trains the groups one process would keep.
"""
from dataclasses import dataclass, fields

import torch

from common import dist
from grpo.curriculum import pass_counts
from lm import sample
from lm.chat import encode_prompt
from lm.draw import prompt_keys
from lm.sampling import Samples
from rewards import score
from tasks import stream_rows


@dataclass
class Groups:
    """G completions of each of some prompts, scored. Rows of the tensors and lists: N = groups * G."""
    prompts: list[dict]            # (groups,) the dataset rows
    samples: Samples               # (N, ...) ids, masks, sampler log-probs
    texts: list[str]               # (N,) decoded completions
    per_reward: dict               # {reward name: (N,) values}
    total: list[float]             # (N,) weighted sums

    def signal(self, G: int) -> torch.Tensor:
        """(groups,) True where the group's rewards are not all equal (its advantages are not all 0),
        decided on the float32 values the advantages are computed from (grpo/train.py): rewards that
        differ only in float64 (0.1 + 0.2 and 0.3) give advantages of 0 and no signal."""
        r = torch.tensor(self.total, dtype=torch.float32).view(-1, G)
        return (r != r[:, :1]).any(1)

    def select(self, keep: list[int], G: int) -> "Groups":
        """The groups at indices `keep`."""
        rows = [g * G + j for g in keep for j in range(G)]
        return Groups([self.prompts[g] for g in keep], select_rows(self.samples, rows),
                      [self.texts[i] for i in rows], {k: [v[i] for i in rows] for k, v in self.per_reward.items()},
                      [self.total[i] for i in rows])

    @staticmethod
    def join(parts: list["Groups"], pad_id: int) -> "Groups":
        return Groups([p for g in parts for p in g.prompts], join_samples([g.samples for g in parts], pad_id),
                      [t for g in parts for t in g.texts],
                      {k: [v for g in parts for v in g.per_reward[k]] for k in parts[0].per_reward},
                      [t for g in parts for t in g.total])


def select_rows(s: Samples, rows: list[int]) -> Samples:
    index = torch.tensor(rows, dtype=torch.long)
    return Samples(**{f.name: getattr(s, f.name)[index.to(getattr(s, f.name).device)] for f in fields(Samples)})


def join_samples(parts: list[Samples], pad_id: int) -> Samples:
    """Samples of several calls in one: prompts padded on the left, completions on the right."""
    P = max(s.prompt_ids.shape[1] for s in parts)
    T = max(s.completion_ids.shape[1] for s in parts)
    left = lambda x, value: torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)
    right = lambda x, value: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)
    return Samples(prompt_ids=torch.cat([left(s.prompt_ids, pad_id) for s in parts]),
                   prompt_mask=torch.cat([left(s.prompt_mask, 0) for s in parts]),
                   completion_ids=torch.cat([right(s.completion_ids, pad_id) for s in parts]),
                   completion_mask=torch.cat([right(s.completion_mask, 0) for s in parts]),
                   truncated=torch.cat([s.truncated for s in parts]),
                   sampler_logp=torch.cat([right(s.sampler_logp, 0.0) for s in parts]))


def sample_groups(policy, tokenizer, prompts: list[dict], positions: range, step: int, specs, config,
                  cuda_graphs=None) -> Groups:
    """G completions for each prompt (at stream `positions`, which key its random numbers), scored."""
    G = config.group_size
    s = sample(policy, [encode_prompt(tokenizer, r["problem"]) for r in prompts], group_size=G,
               max_new_tokens=config.max_completion_length, temperature=config.temperature, top_p=config.top_p,
               top_k=config.top_k, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               keys=prompt_keys(config.seed, step, positions), cuda_graphs=cuda_graphs)
    lengths = s.completion_mask.sum(-1)                                           # (N,)
    ids = [row[:n] for row, n in zip(s.completion_ids.tolist(), lengths.tolist())]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    columns = {k: [r[k] for r in prompts for _ in range(G)] for k in prompts[0] if k != "worked"}
    columns.update(completion_length=lengths.tolist(), completion_ids=ids)
    per_reward, total = score(specs, texts, columns)
    return Groups(prompts, s, texts, per_reward, total)


def fill_with_signal(draw_round, B: int, max_rounds: int, G: int, pad_id: int) -> tuple[Groups, dict]:
    """Dynamic sampling. `draw_round(r)` samples round r's share of this rank (B prompts globally per
    round) -> Groups. Returns this rank's kept groups and `round_stats`. If no round found a group with
    signal anywhere, the last round's groups are kept (their update is 0; their metrics still count;
    they are not counted as dropped)."""
    kept, found, rounds, dropped = [], 0, 0, 0
    while rounds < 1 + max_rounds and found < B:
        groups = draw_round(rounds)
        rounds += 1
        with_signal = [g for g, ok in enumerate(groups.signal(G).tolist()) if ok]
        counts = dist.merge_dicts({dist.rank(): len(with_signal)})      # every rank's count, this round
        before = found + sum(counts[r] for r in range(dist.rank()))      # kept by earlier rounds and ranks
        room = max(0, min(len(with_signal), B - before))
        kept.append(groups.select(with_signal[:room], G))
        dropped += len(groups.prompts) - len(with_signal)
        found += sum(counts.values())
    if not found:  # the last round's groups are trained (an update of 0), not dropped
        dropped -= len(groups.prompts)
    batch = Groups.join(kept, pad_id) if found else groups
    return batch, {"sampling_rounds": rounds, "signal_groups": found, "dropped_groups": int(dist.all_sum(dropped))}


def round_stats(groups: Groups, G: int) -> dict:
    """The stats of `fill_with_signal` for a step of one round that keeps every group."""
    return {"sampling_rounds": 1, "signal_groups": int(dist.all_sum(groups.signal(G).sum().item())),
            "dropped_groups": 0}


def sample_step(policy, tokenizer, rows: list[dict], curriculum, position: int, step: int, mine: range, specs,
                config) -> tuple[Groups, dict]:
    """This rank's groups for the step and the round counts. Round r uses the B prompt slots from
    position + r * B on (this rank takes `mine` of them): the stream's prompts at those positions, or
    the curriculum's draw for them, which then learns from every group sampled (kept or dropped)."""
    B, G = config.prompts_per_step, config.group_size

    def sample_round(r: int) -> Groups:
        first = position + r * B
        prompts = (curriculum.draw(first, B)[mine.start:mine.stop] if curriculum is not None
                   else stream_rows(rows, config.seed, first + mine.start, len(mine)))
        groups = sample_groups(policy, tokenizer, prompts, range(first + mine.start, first + mine.stop), step, specs,
                               config, cuda_graphs=False if config.fsdp else None)
        if curriculum is not None:
            curriculum.update(pass_counts(groups.prompts, groups.per_reward["accuracy"], G))
        return groups

    if config.dynamic_sampling:
        return fill_with_signal(sample_round, B, config.max_sampling_rounds, G, tokenizer.pad_token_id)
    groups = sample_round(0)
    return groups, round_stats(groups, G)
