-- wrk's report as one line bench.sh reads: requests, rate, latency percentiles in microseconds,
-- and errors (non-2xx answers and timeouts count; a timed-out request has no latency sample).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d errors=%d timeouts=%d non2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout, e.timeout, e.status))
end
