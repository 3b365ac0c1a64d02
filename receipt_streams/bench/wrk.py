"""HTTP load from wrk, a C load generator: a Python client sending 1,000 requests a second
takes a good part of a core on a two-core machine, from the very system it measures.

wrk runs a Lua script (below) that sends the lines of a plan (method, path, bearer token and
body each), paces the requests to a target rate and logs, per request,
its line of the plan and the wall-clock time wrk built it, just before writing it, so each
receipt's latency runs from the moment its POST left the client. wrk builds a request it
never writes when a connection is (re)opened: such a line is logged but never accepted, and
the bench measures only receipts the API accepted.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

INSTALL_HINT = "wrk is not installed: `apt-get install wrk` (Debian) or scripts/bench.sh"

# wrk calls `delay` after each response and `request` before each write. Each delay reserves
# the next slot of the schedule (t0 + i / rate), so the connections together keep the rate
# even while some responses are slow. LuaJIT's ffi reads CLOCK_REALTIME: the watchers of
# /sync stamp what they see with Python's time.time(), the same clock.
SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } rs_timespec;
int clock_gettime(int clk_id, rs_timespec *tp);
]]
local clock = ffi.new("rs_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local plan, log, rate, t0, reserved, used, cycle = {}, nil, 1, nil, 0, 0, false

function init(args)
  -- A plan line: METHOD PATH TOKEN BODY, the body "-" for none (a body holds no space).
  for line in io.lines(args[1]) do
    local method, path, token, body = line:match("^(%S+) (%S+) (%S+) (%S+)$")
    local headers = {["Authorization"] = "Bearer " .. token}
    if body == "-" then
      body = nil
    else
      headers["Content-Type"] = "application/json"
    end
    plan[#plan + 1] = wrk.format(method, path, headers, body)
  end
  log = io.open(args[2], "w")
  rate = tonumber(args[3])
  cycle = args[4] == "cycle"
end

function delay()
  if t0 == nil then t0 = now_ms() end
  reserved = reserved + 1
  local wait = t0 + reserved * 1000 / rate - now_ms()
  if wait < 0 then return 0 end
  return wait
end

function request()
  used = used + 1
  if used > #plan then
    -- The plan is spent: go round it again (reads), or repeat its last request (an
    -- unchanged receipt, not measured).
    if cycle then return plan[(used - 1) % #plan + 1] end
    return plan[#plan]
  end
  log:write(used, " ", string.format("%.3f", now_ms()), "\n")
  return plan[used]
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    sent_at_ms: dict[int, float]  # plan line (0-based) -> wall-clock time it was written


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _percentile(output: str, pct: str) -> float:
    match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    return float(match.group(1)) * _UNIT_MS[match.group(2)] if match else float("nan")


def _count(output: str, pattern: str) -> int:
    match = re.search(pattern, output)
    return int(match.group(1)) if match else 0


def parse_output(output: str) -> tuple[int, int, int, float, float]:
    """wrk's summary: requests, non-2xx answers, socket errors, POST p50 and p99 (ms)."""
    errors = sum(
        int(n)
        for n in re.findall(
            r"(?:connect|read|write|timeout) (\d+)",
            output.split("Socket errors:", 1)[1] if "Socket errors:" in output else "",
        )
    )
    return (
        _count(output, r"(\d+) requests in"),
        _count(output, r"Non-2xx or 3xx responses: (\d+)"),
        errors,
        _percentile(output, "50"),
        _percentile(output, "99"),
    )


def read_log(path: Path) -> dict[int, float]:
    sent: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            index, at = line.split()
            sent[int(index) - 1] = float(at)
    return sent


@dataclass(frozen=True)
class Request:
    """One line of a plan. The body is sent as JSON (None: no body); it must hold no space
    (orjson writes none), nor the path nor the token."""

    method: str
    path: str
    token: str
    body: bytes | None = None

    def line(self) -> str:
        body = self.body.decode() if self.body is not None else "-"
        fields = (self.method, self.path, self.token, body)
        if any(not f or any(c.isspace() for c in f) for f in fields):
            raise ValueError(f"a plan field is empty or holds a space: {fields!r}")
        return " ".join(fields) + "\n"


def _prepare(workdir: Path, plan: list[Request]) -> tuple[Path, Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    script, plan_file, log = workdir / "plan.lua", workdir / "plan.txt", workdir / "sent.txt"
    script.write_text(SCRIPT)
    with plan_file.open("w") as out:
        out.writelines(r.line() for r in plan)
    log.unlink(missing_ok=True)
    return script, plan_file, log


async def post_at_rate(
    host: str,
    plan: list[tuple[str, str]],
    rate: float,
    duration_s: float,
    workdir: Path,
    connections: int = 64,
) -> WrkResult:
    """POST `plan` ((path, token) pairs, in order, each with the body `{}`) at `rate` a
    second for `duration_s`; the plan spent, its last request is repeated."""
    requests = [Request("POST", path, token, b"{}") for path, token in plan]
    return await requests_at_rate(host, requests, rate, duration_s, workdir, connections)


async def requests_at_rate(
    host: str,
    plan: list[Request],
    rate: float,
    duration_s: float,
    workdir: Path,
    connections: int = 64,
    cycle: bool = False,
) -> WrkResult:
    """Send `plan` in order at `rate` a second for `duration_s`. Once it is spent, go round
    it again with `cycle`, else repeat its last request."""
    script, plan_file, log = _prepare(workdir, plan)
    proc = await asyncio.create_subprocess_exec(
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        host,
        "--",
        str(plan_file),
        str(log),
        str(rate),
        "cycle" if cycle else "once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    talking = asyncio.ensure_future(proc.communicate())
    with tqdm(total=round(duration_s), desc=f"wrk @ {rate:g}/s", unit="s", leave=False) as bar:
        started = time.monotonic()
        while not talking.done():
            await asyncio.wait([talking], timeout=0.5)
            bar.n = min(round(duration_s), round(time.monotonic() - started))
            bar.refresh()
    out, _ = talking.result()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    requests, non_2xx, socket_errors, p50, p99 = parse_output(text)
    return WrkResult(requests, non_2xx, socket_errors, p50, p99, read_log(log))
