#!/usr/bin/env python3
"""Peer benchmark: Python process pools with 2 workers and a no-op job.

Measures, for concurrent.futures.ProcessPoolExecutor(2) and multiprocessing.Pool(2):
  (i)  sequential round trip: submit one job, wait for its result, repeat;
       mean (and median) microseconds per round trip;
  (ii) burst: N jobs at once through map() with chunksize 1 and chunksize 1000; jobs/s.

Output: one line per figure, `name=<name> value=<number> unit=<unit>`, on stdout.
Usage:  python3 peers.py [--quick] [--rt N] [--burst N] [--start-method fork|spawn|forkserver]
--quick runs a tiny version (a few seconds in all).
"""
import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
import time


def noop(x=None):
    return x


def emit(name, value, unit):
    print(f"name={name} value={value:.1f} unit={unit}", flush=True)


def round_trips(call, n, warm):
    for _ in range(warm):
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return statistics.fmean(samples) / 1000.0, statistics.median(samples) / 1000.0


def burst(run_map, n):
    t0 = time.perf_counter()
    out = run_map(n)
    dt = time.perf_counter() - t0
    if len(out) != n:
        raise SystemExit(f"burst returned {len(out)} results, expected {n}")
    return n / dt


def bench_executor(ctx, rt_n, warm, burst_n, chunks):
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        # Start both workers before timing anything.
        list(ex.map(noop, range(8)))
        mean, med = round_trips(lambda: ex.submit(noop).result(), rt_n, warm)
        emit("py_ProcessPoolExecutor_rt_mean", mean, "us/rt")
        emit("py_ProcessPoolExecutor_rt_median", med, "us/rt")
        for cs in chunks:
            rate = burst(lambda n: list(ex.map(noop, range(n), chunksize=cs)), burst_n)
            emit(f"py_ProcessPoolExecutor_burst_chunksize{cs}", rate, "tasks/s")


def bench_pool(ctx, rt_n, warm, burst_n, chunks):
    with ctx.Pool(2) as pool:
        pool.map(noop, range(8), chunksize=1)
        mean, med = round_trips(lambda: pool.apply(noop), rt_n, warm)
        emit("py_multiprocessing_Pool_rt_mean", mean, "us/rt")
        emit("py_multiprocessing_Pool_rt_median", med, "us/rt")
        for cs in chunks:
            rate = burst(lambda n: pool.map(noop, range(n), chunksize=cs), burst_n)
            emit(f"py_multiprocessing_Pool_burst_chunksize{cs}", rate, "tasks/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run (a few seconds)")
    ap.add_argument("--rt", type=int, default=None, help="sequential round trips (default 2000, quick 200)")
    ap.add_argument("--burst", type=int, default=None, help="jobs per burst (default 100000, quick 5000)")
    ap.add_argument("--start-method", default=None,
                    help="multiprocessing start method (default: the platform default, fork on Linux/3.11)")
    ap.add_argument("--only", choices=["executor", "pool"], default=None)
    args = ap.parse_args()

    rt_n = args.rt or (200 if args.quick else 2000)
    burst_n = args.burst or (5000 if args.quick else 100000)
    warm = max(20, rt_n // 10)
    chunks = (1, 1000)
    ctx = multiprocessing.get_context(args.start_method)
    print(f"# python {sys.version.split()[0]} start_method={ctx.get_start_method()} "
          f"rt={rt_n} burst={burst_n}", file=sys.stderr)

    if args.only in (None, "executor"):
        bench_executor(ctx, rt_n, warm, burst_n, chunks)
    if args.only in (None, "pool"):
        bench_pool(ctx, rt_n, warm, burst_n, chunks)


if __name__ == "__main__":
    main()
