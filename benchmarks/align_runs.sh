#!/usr/bin/env bash
# The alignment comparison over seeds on a 2-core CPU: bench_align.py split over two processes.
#
#   benchmarks/align_runs.sh WORK USERS LR "SEEDS" EVAL_USERS [TIME_USERS]
#   DATA=beauty-cf benchmarks/align_runs.sh runs/align/u2000 2000 1e-4 "0 1 2" 200   # align_beauty-cf_u2000/
#
# 1. once: teacher data and the target's logits for the first USERS users' train prompts, in
#    WORK/cache (one step of one teacher method and of TVD-KD makes both; 2 threads);
# 2. per seed: the six methods, one epoch each, on two processes of one thread (train only);
# 3. per seed: the evaluation on the first EVAL_USERS test users, the last checkpoint; with TIME_USERS,
#    all are first counted untimed on two processes of one thread (--count-only, half the runs each; resumable;
#    what does not depend on the seed, such as the start draft's strict runs, is counted once, in
#    WORK/eval-all), then the first TIME_USERS are timed alone (2 threads) and the counts are read;
# 4. the mean and spread over seeds: WORK/seeds.md.
# Every step resumes (rerun the script after an interruption). DATA: the dataset folder (default: the
# co-occurrence copy of the README, beauty-cf); TARGET and DRAFT: the committed pair unless set.
set -euo pipefail
trap 'kill $(jobs -p) 2> /dev/null || true' EXIT  # a failed step stops its partner process too
work=$1; users=$2; lr=$3; seeds=$4; eval_users=$5; time_users=${6:-$5}
data=${DATA:-beauty-cf}
target=${TARGET:-atspeed/rec/pretrained/beauty-cf-target}
draft=${DRAFT:-atspeed/rec/pretrained/beauty-cf-draft}
bench="python benchmarks/bench_align.py --data $data --target $target --draft $draft --train-users $users --lr $lr
  --align-eval-users 100"
mkdir -p "$work"

if [ ! -e "$work/cache/cache.done" ]; then
  OMP_NUM_THREADS=2 $bench --out "$work/cache" --steps 1 --threads 2 --results-dir "$work/cache" --skip-eval \
    --methods atspeed-s,tvdkd > "$work/cache.log" 2>&1
  echo done > "$work/cache/cache.done"
fi

for seed in $seeds; do
  out=$work/seed$seed
  mkdir -p "$out"
  for d in teacher target-logits; do [ -e "$out/$d" ] || ln -s "$work/cache/$d" "$out/$d"; done
  [ -e "$out/train.done" ] && continue
  common="--out $out --epochs 1 --seed $seed --threads 1 --results-dir $out --skip-eval"
  OMP_NUM_THREADS=1 $bench $common --methods atspeed-s,atspeed-r,none >> "$out/a.log" 2>&1 &
  a=$!
  OMP_NUM_THREADS=1 $bench $common --methods tvdkd,seqkd,wordkd >> "$out/b.log" 2>&1
  wait $a
  echo done > "$out/train.done"
done

runs=()
for seed in $seeds; do
  out=$work/seed$seed
  if ! ls "$out"/align_*.json > /dev/null 2>&1; then
    evaluate="$bench --out $out --epochs 1 --seed $seed --results-dir $out --eval-users $eval_users
      --time-users $time_users --count-cache $work/eval-all --checkpoint last
      --methods atspeed-s,atspeed-r,wordkd,tvdkd,seqkd,none"
    if [ "$time_users" -lt "$eval_users" ]; then  # the untimed runs, shared by two processes
      OMP_NUM_THREADS=1 $evaluate --threads 1 --count-only --count-shard 0/2 >> "$out/count-a.log" 2>&1 &
      a=$!
      OMP_NUM_THREADS=1 $evaluate --threads 1 --count-only --count-shard 1/2 >> "$out/count-b.log" 2>&1
      wait $a
    fi
    OMP_NUM_THREADS=2 $evaluate --threads 2 > "$out/eval.log" 2>&1  # times on the quiet machine, reads the counts
  fi
  runs+=("$(ls "$out"/align_*.json | head -1)")
done
python benchmarks/align_seeds.py "${runs[@]}" --out "$work/seeds"
