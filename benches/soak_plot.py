"""Plots the soak's samples (target/soak/samples.csv): RSS, fds and threads over time."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
minutes = [int(r["seconds"]) / 60 for r in rows]
fig, (mem, counts) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
mem.plot(minutes, [int(r["rss_kb"]) / 1024 for r in rows], color="tab:blue")
mem.set_ylabel("RSS (MB)")
mem.set_ylim(bottom=0)
mem.grid(alpha=0.3)
counts.plot(minutes, [int(r["fds"]) for r in rows], label="open fds", color="tab:orange")
counts.plot(minutes, [int(r["threads"]) for r in rows], label="threads", color="tab:green")
counts.set_ylabel("count")
counts.set_ylim(bottom=0)
counts.set_xlabel("minutes")
counts.legend(loc="lower right")
counts.grid(alpha=0.3)
fig.suptitle("fngate soak: 160 req/s, catalog edit every second, 100 events/s")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)
