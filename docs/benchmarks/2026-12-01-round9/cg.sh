#!/bin/bash
# usage: cg.sh LABEL TARGET(exchange|relay) BINDIR
L=$1; T=$2; B=${3:-/work/target-rel/release}
for m in 10 30; do
  d=/work/bench/cg/$L-$m; rm -rf $d; mkdir -p $d
  $B/loadtest run p1-latency --exchange-bin $B/pingpost --targets $T --rate 50 --warmup-s 2 --duration-s $m --timeout-ms 2000 --out $d \
    --wrap "valgrind --tool=callgrind --callgrind-out-file=$d/callgrind.out.%p" > $d/log.txt 2>&1
done
tot() { for f in /work/bench/cg/$L-$1/callgrind.out.*; do grep -m1 "^totals:" $f | awk '{print $2}'; done | sort -n | tail -1; }
a=$(tot 10); b=$(tot 30); echo "$L $T: 10s=$a 30s=$b per-auction=$(( (b-a)/1000 ))" | tee -a /work/bench/cg/summary.txt
