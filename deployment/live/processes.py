"""Child processes of the live test: the private PostgreSQL servers and Redis, and the binaries'
environment."""

import glob
import os
import shutil
import signal
import subprocess
import sys

from common import LOGS, free_port, http_get, wait_until


PROCS = []


class Proc:
    """One child process in a session of its own, its output appended to LOGS/<name>.log."""

    def __init__(self, name, argv, env=None, user=None):
        self.name, self.argv, self.env, self.user = name, argv, env, user
        self.popen = None
        self.log_path = os.path.join(LOGS, f"{name}.log")
        PROCS.append(self)

    def start(self):
        kwargs = {"user": self.user} if self.user and os.geteuid() == 0 else {}
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=self.env, start_new_session=True, **kwargs)
        return self

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig):
        if self.alive():
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Sends `sig` (SIGKILL after `timeout`) and reaps the process."""
        if self.popen is None:
            return
        self.send(signal.SIGCONT)
        self.send(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait()
        self.popen = None

    def kill(self):
        self.stop(signal.SIGKILL, 5)

    def discard(self, sig=signal.SIGTERM, timeout=15):
        """Stops the process for good: the final clean-up no longer tracks it."""
        self.stop(sig, timeout)
        PROCS.remove(self)


def cleanup():
    for proc in reversed(PROCS):
        try:
            proc.stop(timeout=10)
        except Exception as error:  # noqa: BLE001 - keep cleaning up the others
            print(f"cleanup: {proc.name}: {error}", file=sys.stderr)
    PROCS.clear()


def binary_env(**extra):
    """The environment minus anything that configures the binaries, plus `extra`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("OPENRISK_") and key not in ("DATABASE_URL", "REDIS_URL", "API_ADDR",
                                                                "METRICS_ADDR", "RUST_LOG", "DATA_SOURCE_NAME")}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def wait_ready(proc, probe, timeout, interval=0.1):
    """Calls probe() until it succeeds, while `proc`, the server it asks, runs; returns whether it
    succeeded within `timeout`. Raises at once if `proc` has exited: its port was picked before it
    bound it, and another server that took the port meanwhile must not be tested in its place."""
    answered = wait_until(proc.name, lambda: not proc.alive() or probe(), timeout, interval)
    if not proc.alive():
        status = proc.popen.returncode if proc.popen else None
        raise RuntimeError(f"{proc.name} exited (status {status}) before it answered (log: {proc.log_path})")
    return bool(answered)


def wait_http(proc, url, timeout=60):
    if not wait_ready(proc, lambda: http_get(url)[0] == 200, timeout):
        raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s (log: {proc.log_path})")


# ---------------------------------------------------------------- Postgres and Redis

def pg_bin_dir():
    if os.environ.get("PG_BIN_DIR"):
        return os.environ["PG_BIN_DIR"]
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not versions:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql (set PG_BIN_DIR)")
    return versions[-1]


class Postgres:
    """A private server: a primary of its own (initdb), or with `replica_of` a streaming replica
    of that primary (`pg_basebackup -R` on first start; hot standby answers reads)."""

    def __init__(self, work, name="postgres", replica_of=None):
        self.bin = pg_bin_dir()
        self.dir = os.path.join(work, name)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.replica_of = replica_of
        os.makedirs(self.dir)
        user = None
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            user = "postgres"
        self.run_as = {"user": user} if user else {}
        if replica_of is None:
            subprocess.run([os.path.join(self.bin, "initdb"), "-A", "trust", "-U", "postgres", "--no-sync",
                            "-D", self.data], check=True, capture_output=True, **self.run_as)
        self.proc = Proc(name, [os.path.join(self.bin, "postgres"), "-D", self.data,
                                "-p", str(self.port), "-k", self.dir, "-c", "listen_addresses=127.0.0.1",
                                "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200",
                                "-c", "track_commit_timestamp=on"],
                         user=user)

    def start(self):
        if self.replica_of is not None and not os.path.exists(self.data):
            subprocess.run([os.path.join(self.bin, "pg_basebackup"), "-h", "127.0.0.1", "-p",
                            str(self.replica_of.port), "-U", "postgres", "-R", "-X", "stream", "--no-sync",
                            "-c", "fast", "-D", self.data], check=True, capture_output=True, **self.run_as)
        self.proc.start()
        # Through its own socket directory: another server that took the port cannot answer there.
        argv = [os.path.join(self.bin, "pg_isready"), "-q", "-h", self.dir, "-p", str(self.port)]
        if not wait_ready(self.proc, lambda: subprocess.run(argv).returncode == 0, 30, 0.2):
            raise RuntimeError("private PostgreSQL did not start")

    def url(self, database="openrisk"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def psql_argv(self, database="openrisk"):
        return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                "-U", "postgres", "-d", database]

    def sql(self, statement, database="openrisk", timeout=120):
        result = subprocess.run(self.psql_argv(database) + ["-c", statement], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}\n{statement}")
        return result.stdout.strip()

    def value(self, statement):
        return self.sql(statement).splitlines()[0]

    def end_sessions(self, application, sessions):
        """Ends the backends of `application` (as an operator would: ending psql leaves its backend
        running) and then the psql processes `sessions`."""
        self.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                 f"WHERE application_name = '{application}'")
        for session in sessions:
            session.discard(signal.SIGTERM, 5)

    def session(self, name, statement, application="openrisk-live"):
        """A psql session of its own running `statement` in the background (a Proc)."""
        return Proc(name, self.psql_argv() + ["-c", statement],
                    env=dict(os.environ, PGAPPNAME=application)).start()


class Redis:
    def __init__(self, work):
        self.port = free_port()
        self.dir = os.path.join(work, "redis")
        os.makedirs(self.dir)
        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru",
                                   "--dir", self.dir])

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args):
        result = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args], capture_output=True,
                                text=True, timeout=10)
        return result.stdout.strip()

    def answers_as_itself(self):
        """Whether the Redis answering on the port is this one (not another that took it first,
        which answers before this one has failed to bind and exited)."""
        return f"process_id:{self.proc.popen.pid}" in self.cli("INFO", "server").split()

    def start(self):
        self.proc.start()
        if not wait_ready(self.proc, self.answers_as_itself, 10, 0.05):
            raise RuntimeError("private Redis did not start")

    def used_memory(self):
        info = self.cli("INFO", "memory")
        return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")))
