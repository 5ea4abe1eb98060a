#!/usr/bin/env python3
"""A pipeline's throughput beyond this machine, on paper.

Reads the broker's stats (xlm-client stats: one JSON object) of a run of a
pipeline with at least 2 stages, and takes from them, per micro-batch:
  - each stage's compute time (stages[s].total_us / stages[s].batches),
  - the packet between two stages (stages[1].packet_bytes / stages[1].batches:
    every stage boundary carries the same packet),
  - the requests it answered (requests_done / batches).
From those it predicts the pipeline's requests/s for S stages on links of
bandwidth B and latency L:

  c      = (sum of the measured stages' compute) / S * imbalance
           (the measured slowest stage over the mean: the layer split is as
           uneven with S stages as it was when measured)
  wire   = packet bytes * 8 / B              (one packet on one link)
  cycle  = max(c, wire)                      a stage computes the next micro-batch
                                             while its last packet is on the wire
  trip   = S * c + (S - 1) * (L + wire)      one micro-batch through the pipeline
  rate   = min(1 / cycle, K / trip)          K micro-batches in flight (the
                                             pipeline's credit, stages + 1 by default)
  requests/s = rate * requests per micro-batch

The limit is named: compute (1/c binds), link (the wire time of a packet
exceeds a stage's compute), window (K micro-batches cannot cover the trip:
latency), or link+window. Nothing else is modelled (the broker's own hop, BLAS threads,
several pipelines).

Usage:
  pipeline_model.py STATS.json [--model NAME] [--table] [--stages S --gbit B --latency-ms L]
                    [--credit K] [--speedup F] [--label TEXT]
  STATS.json '-' reads standard input. --table prints 2..8 stages x 1, 10, 100 Gbit/s x
  0.05, 0.1, 0.5, 1 ms; one prediction otherwise (--gbit 0: an unbounded link, such as
  shared memory on one host).
"""
import argparse
import json
import sys


class Measured:
    def __init__(self, stats, model_name, speedup=1.0):
        models = stats.get("models", [])
        if model_name:
            models = [m for m in models if m.get("name") == model_name]
        if not models:
            sys.exit("pipeline_model: no model%s in the stats" % (" " + model_name if model_name else ""))
        m = models[0]
        stages = m.get("stages", [])
        if len(stages) < 2:
            sys.exit("pipeline_model: model %s has %d stage(s) in the stats; a run of 2 or more "
                     "stages gives the packet bytes" % (m.get("name"), len(stages)))
        for s in stages:
            if not s.get("batches"):
                sys.exit("pipeline_model: stage %d computed no micro-batch: score something first" % s["stage"])
        self.name = m.get("name")
        self.n_stages = len(stages)
        self.stage_s = [s["total_us"] / s["batches"] / 1e6 for s in stages]
        self.batches = stages[-1]["batches"]
        if not stages[1].get("packet_bytes"):
            sys.exit("pipeline_model: no packet_bytes in the stats of stage 1 (a broker older "
                     "than this model, or no packet yet)")
        self.packet_bytes = stages[1]["packet_bytes"] / stages[1]["batches"]
        self.requests_per_batch = m.get("requests_done", 0) / self.batches
        self.speedup = speedup
        self.imbalance = max(self.stage_s) / (sum(self.stage_s) / self.n_stages)
        self.compute_s = sum(self.stage_s) / speedup

    def describe(self):
        faster = "" if self.speedup == 1 else "; compute taken %g times faster" % self.speedup
        return ("measured %s, %d stages: compute per micro-batch %s ms (sum %.2f ms, slowest/mean %.2f), "
                "packet %.0f bytes, %.1f requests per micro-batch, %d micro-batches"
                % (self.name, self.n_stages, " + ".join("%.2f" % (t * 1e3) for t in self.stage_s),
                   sum(self.stage_s) * 1e3, self.imbalance, self.packet_bytes, self.requests_per_batch,
                   self.batches) + faster)


def predict(m, stages, gbit, latency_ms, credit=None):
    """Requests/s and the limit's name for stages on links of gbit Gbit/s
    (0: unbounded) and latency_ms."""
    k = credit if credit else stages + 1
    c = m.compute_s / stages * m.imbalance
    wire = m.packet_bytes * 8 / (gbit * 1e9) if gbit > 0 else 0.0
    latency = latency_ms / 1e3
    cycle = max(c, wire)
    trip = stages * c + (stages - 1) * (latency + wire)
    by_cycle, by_window = 1 / cycle, k / trip
    rate = min(by_cycle, by_window)
    limit = "link" if wire > c else "compute"
    if by_window < by_cycle:
        limit = "window" if limit == "compute" else "link+window"
    return rate * m.requests_per_batch, limit


def table(m, credit, label):
    bandwidths = [1, 10, 100]
    latencies = [0.05, 0.1, 0.5, 1.0]
    print(m.describe())
    if label:
        print(label)
    head = ["stages", "compute-bound"] + ["%g Gbit/s %g ms" % (b, l) for b in bandwidths for l in latencies]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for stages in range(2, 9):
        ideal, _ = predict(m, stages, 0, 0, credit)
        cells = ["%d" % stages, "%.3g" % ideal]
        for b in bandwidths:
            for l in latencies:
                rate, limit = predict(m, stages, b, l, credit)
                cells.append("%.3g%s" % (rate, "" if limit == "compute" else " (%s)" % limit))
        print("| " + " | ".join(cells) + " |")
    # Where the link would take over: the bandwidth at which a packet's wire
    # time equals one stage's compute.
    for stages in (2, 8):
        c = m.compute_s / stages * m.imbalance
        print("link-bound below %.3g Gbit/s with %d stages (a packet's wire time = a stage's %.2f ms)"
              % (m.packet_bytes * 8 / c / 1e9, stages, c * 1e3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stats", help="xlm-client stats output (JSON), '-' for standard input")
    ap.add_argument("--model", help="the served model's name (default: the first)")
    ap.add_argument("--table", action="store_true", help="2-8 stages x bandwidths x latencies")
    ap.add_argument("--stages", type=int, help="stages of the predicted pipeline (default: as measured)")
    ap.add_argument("--gbit", type=float, default=0, help="link bandwidth, Gbit/s (0: unbounded)")
    ap.add_argument("--latency-ms", type=float, default=0, help="one-way link latency, ms")
    ap.add_argument("--credit", type=int, help="micro-batches in flight (default: stages + 1)")
    ap.add_argument("--label", help="a line printed under the measured figures")
    ap.add_argument("--speedup", type=float, default=1.0,
                    help="take the stages' compute F times faster (other hardware), links unchanged")
    a = ap.parse_args()
    try:
        stats = json.load(sys.stdin if a.stats == "-" else open(a.stats))
    except (OSError, ValueError) as e:
        sys.exit("pipeline_model: cannot read the stats %s: %s" % (a.stats, e))
    if a.speedup <= 0:
        sys.exit("pipeline_model: --speedup %g, expected > 0" % a.speedup)
    m = Measured(stats, a.model, a.speedup)
    if a.table:
        table(m, a.credit, a.label)
        return
    stages = a.stages or m.n_stages
    if stages < 1:
        sys.exit("pipeline_model: --stages %d, expected 1 or more" % stages)
    rate, limit = predict(m, stages, a.gbit, a.latency_ms, a.credit)
    print("predicted model=%s stages=%d gbit=%g latency_ms=%g requests_per_s=%.1f limit=%s"
          % (m.name, stages, a.gbit, a.latency_ms, rate, limit))


if __name__ == "__main__":
    main()
