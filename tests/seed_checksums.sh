#!/usr/bin/env bash
# The determinism check for refactors (not run by pytest: a few minutes on 2 cores): one
# small run of each algorithm through the command line, then the sha256 of every eval.jsonl.
# Run it on the commit before a change and after it; the lines must be equal. It also
# compares them with tests/seed_checksums.expected; a change that moves a seed's numbers on
# purpose updates that file and says why in its commit.
#     bash tests/seed_checksums.sh [OUT]     (default OUT: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
SAC="--network.hidden_sizes 16,16 --network.num_experts 2 --sac.batch_size_per_task 8
 --sac.buffer_size_per_task 2000 --sac.critic_warmup 40 --sac.actor_warmup 60 --eval.episodes 1
 --train.chunk_steps 20 --env.max_episode_steps 40 --no-progress --env.suite custom
 --env.tasks reach-v3,drawer-close-v3 --train.total_steps_per_task 200 --train.eval_every 80
 --train.checkpoint_every 80"
python launch.py train --preset mt10_moore $SAC --out "$OUT/sac" > "$OUT/sac.log" 2>&1
python launch.py train --preset mt10_weightmask $SAC --network.mask_update_every 5 \
    --out "$OUT/sacwm" > "$OUT/sacwm.log" 2>&1
python launch.py train --preset mt10_paco $SAC --out "$OUT/sacpaco" > "$OUT/sacpaco.log" 2>&1
PPO="--env.suite minigrid_custom --env.tasks MiniGrid-LavaGapS5-v0,MiniGrid-LavaGapS6-v0
 --ppo.steps_per_task 32 --ppo.envs_per_task 4 --ppo.epochs 2 --ppo.num_minibatches 2
 --train.total_steps_per_task 96 --train.eval_every 32 --train.checkpoint_every 32
 --eval.episodes 2 --eval.deterministic false --no-progress"
python launch.py train --preset minigrid_mt3_moore $PPO --out "$OUT/ppo" --num-seeds 2 \
    > "$OUT/ppo.log" 2>&1
TASKS=MiniGrid-LavaGapS5-v0,MiniGrid-DoorKey-5x5-v0
[ -d "$OUT/data" ] || python launch.py collect --source minigrid --suite minigrid_custom \
    --tasks $TASKS --tier expert --episodes 4 --seed 0 --out "$OUT/data" --no-progress \
    > "$OUT/collect.log" 2>&1
DT="--env.suite minigrid_custom --env.tasks $TASKS --dt.dataset $OUT/data --dt.context_len 6
 --dt.embed_dim 16 --dt.num_layers 1 --dt.num_heads 2 --dt.batch_per_task 4 --dt.dropout 0.0
 --dt.learning_rate 3e-3 --dt.warmup_steps 0 --dt.updates 8 --dt.max_timestep 250
 --train.eval_every 4 --train.checkpoint_every 4 --eval.episodes 3 --no-progress"
python launch.py train --preset minigrid_mt3_mtdt $DT --out "$OUT/dt" > "$OUT/dt.log" 2>&1
python launch.py train --preset minigrid_mt3_harmodt $DT --out "$OUT/harmodt" \
    > "$OUT/harmodt.log" 2>&1
for f in "$OUT"/*/*/eval.jsonl; do
    run=$(basename "$(dirname "$f")")
    echo "$(sha256sum "$f" | cut -c1-16) $(basename "$(dirname "$(dirname "$f")")")/${run%%-2*}"
done | tee "$OUT/checksums.txt"
# The values of the last intended change, on the project's 2-core x86_64 CPU machine (other
# machines may round differently): a line that differs is a changed number.
if diff <(sort -k2 tests/seed_checksums.expected) <(sort -k2 "$OUT/checksums.txt") \
        > "$OUT/checksums.diff"; then
    echo "all equal to tests/seed_checksums.expected"
else
    echo "DIFFERENT from tests/seed_checksums.expected (< expected, > now):"
    cat "$OUT/checksums.diff"
fi
