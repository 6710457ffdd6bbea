"""The session helper the broker starts on a terminal target for the strict guard.

It runs on the target (a local process as the target's OS user, or over SSH as the session's
command), needs only Python 3's standard library, and is sent whole by the broker: it imports
nothing from the broker. It owns the pty and the shell:

* The shell (bash, without line editing or start-up files) reads its commands from a socket
  only this helper writes to, never from the terminal its jobs share. Keys typed while a job
  has the terminal reach the pty, where only jobs read them; when the shell is back at its
  prompt, anything left unread on the pty is discarded. A socket cannot be reopened through
  /proc, and what the shell's children write into it reaches this helper, not the shell.
* Each command from the broker runs as ``builtin eval -- 'TEXT' 0<&2``: the shell parses
  exactly the judged text as one unit (an incomplete construct is a syntax error, never the
  start of the next command), its jobs get the pty as input, and any redirection of the
  shell's own input inside the command is undone when it ends.
* Whether the shell waits for a command is known out of band: its PROMPT_COMMAND reports the
  exit status and working directory on the socket, the pty's foreground process group is the
  shell's own, and the shell's input is still this helper's socket (checked in /proc). If the
  shell's input is ever anything else, the helper ends the session.

Frames in both directions on stdin/stdout: one type byte, a 4-byte big-endian length, the
payload. Broker to helper: H hello (JSON), R run (command text), K keys (raw bytes),
W window (JSON cols/rows), C complete (JSON), X hang up. Helper to broker: O output,
P prompt (JSON: rc, cwd, discarded), E echo (JSON), c completions (JSON), Q exit (JSON:
status, reason), ! fatal error (text).
"""

import errno
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import sys
import termios
import time

HEADER = struct.Struct(">cI")
READ_SIZE = 65536
POLL = 0.1
MAX_FRAME = 16 << 20
STATUS_MARK = b"\x1e"
# bash leaves with stopped jobs only when `exit` follows `exit` (or `jobs`); the eval wrapper
# and PROMPT_COMMAND would stand between the two, so a repeated bare `exit N` goes as is.
EXIT_LINE = re.compile(r"\s*(exit|logout)(\s+[0-9]{1,3})?\s*")
INIT = (
    "PS1=; PS2=; PS0=; PS4='+ '; set +o history; unset HISTFILE; "
    'PROMPT_COMMAND=\'__hoop_rc=$?; builtin printf "\\036%d %s\\036" "$__hoop_rc" '
    '"$PWD" >&0\'; readonly PROMPT_COMMAND PS0\n'
)


def quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


class Agent:
    def __init__(self):
        self.out = sys.stdout.fileno()
        self.inp = sys.stdin.fileno()
        self.inbuf = b""
        self.master = -1
        self.slave = -1
        self.sock = None
        self.sock_inode = None
        self.shell = 0
        self.status_buf = b""
        self.pending = None  # (rc, cwd) reported by the shell, not yet passed on
        self.running = True  # a command (or the start-up) is in flight
        self.echo = None
        self.cwd = os.getcwd()
        self.exit_reason = None
        self.last_was_exit = False

    # -- frames ---------------------------------------------------------------------------
    def send(self, kind, payload):
        data = HEADER.pack(kind, len(payload)) + payload
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.out, view) :]
            except InterruptedError:
                continue

    def send_json(self, kind, obj):
        self.send(kind, json.dumps(obj).encode())

    def frames(self):
        while len(self.inbuf) >= HEADER.size:
            kind, size = HEADER.unpack_from(self.inbuf)
            if size > MAX_FRAME:
                self.fatal("frame too large")
            if len(self.inbuf) < HEADER.size + size:
                return
            payload = self.inbuf[HEADER.size : HEADER.size + size]
            self.inbuf = self.inbuf[HEADER.size + size :]
            yield kind, payload

    def fatal(self, text):
        self.send(b"!", text.encode())
        self.hangup()
        sys.exit(2)

    # -- the shell ------------------------------------------------------------------------
    def start(self, hello):
        self.master, self.slave = os.openpty()
        self.resize(hello.get("cols", 80), hello.get("rows", 24))
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.sock_inode = os.fstat(theirs.fileno()).st_ino
        env = dict(os.environ)
        env.update(hello.get("env") or {})
        env["TERM"] = hello.get("term") or "xterm-256color"
        env["PS1"] = ""
        env["PS2"] = ""
        for name in ("BASH_ENV", "ENV", "PROMPT_COMMAND", "HISTFILE"):
            env.pop(name, None)
        shell = hello.get("shell") or "bash"
        argv = [shell, "--noediting", "--norc", "--noprofile", "-i", "-s"]
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.dup2(theirs.fileno(), 0)
                os.dup2(self.slave, 1)
                os.dup2(self.slave, 2)
                fcntl.ioctl(2, termios.TIOCSCTTY, 0)
                os.closerange(3, 65536)
                _parent_death_hangup()
                os.execvpe(shell, argv, env)  # noqa: S606 (the shell is the point)
            except BaseException as exc:
                os.write(2, f"hoop: cannot start {shell}: {exc}\r\n".encode())
            os._exit(127)
        self.shell = pid
        theirs.close()
        self.watchdog = _start_watchdog(pid)
        os.set_blocking(self.master, False)
        self.sock.setblocking(False)
        self.sock.sendall(INIT.encode())

    def resize(self, cols, rows):
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError:
            pass

    def run(self, text):
        if not self.input_is_ours():
            self.end_broken()
            return
        self.running = True
        self.pending = None
        is_exit = EXIT_LINE.fullmatch(text) is not None
        if is_exit and self.last_was_exit:
            line = "builtin jobs >/dev/null 2>&1; " + text.strip() + "\n"
        else:
            line = "builtin eval -- " + quote(text) + " 0<&2\n"
        self.last_was_exit = is_exit
        self.sock.sendall(line.encode())

    def input_is_ours(self):
        try:
            link = os.readlink(f"/proc/{self.shell}/fd/0")
        except OSError:
            return False
        return link == f"socket:[{self.sock_inode}]"

    def end_broken(self):
        self.exit_reason = "the shell's command input was redirected; the session is ended"
        self.hangup()

    def on_status(self):
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return
        self.status_buf = (self.status_buf + data)[-READ_SIZE:]
        while True:
            start = self.status_buf.find(STATUS_MARK)
            end = self.status_buf.find(STATUS_MARK, start + 1)
            if start < 0 or end < 0:
                return
            body = self.status_buf[start + 1 : end]
            self.status_buf = self.status_buf[end + 1 :]
            rc, _, cwd = body.decode("utf-8", "replace").partition(" ")
            if rc.lstrip("-").isdigit():
                self.pending = (int(rc), cwd)

    def check(self):
        """Pass on a prompt once the shell truly waits; report echo changes."""
        try:
            attrs = termios.tcgetattr(self.master)
            echo = bool(attrs[3] & termios.ECHO)
        except termios.error:
            echo = None
        if echo != self.echo:
            self.echo = echo
            self.send_json(b"E", {"echo": echo})
        if self.pending is None or not self.running:
            if not self.running and self.shell and not self.input_is_ours():
                self.end_broken()
            return
        try:
            foreground = os.tcgetpgrp(self.master)
        except OSError:
            return
        if foreground != self.shell and _group_alive(foreground):
            return
        if not self.input_is_ours():
            self.end_broken()
            return
        self.drain_output()
        try:
            waiting = struct.unpack("I", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4))[0]
            termios.tcflush(self.slave, termios.TCIFLUSH)
        except OSError:
            waiting = 0
        rc, cwd = self.pending
        self.cwd = cwd or self.cwd
        self.pending = None
        self.running = False
        self.send_json(b"P", {"rc": rc, "cwd": self.cwd, "discarded": waiting, "shell": self.shell})

    def drain_output(self):
        while True:
            try:
                data = os.read(self.master, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            self.send(b"O", data)

    def complete(self, request):
        word = request.get("word", "")
        kind = request.get("kind", "path")
        matches = _complete_command(word) if kind == "command" else _complete_path(word, self.cwd)
        self.send_json(b"c", {"id": request.get("id"), "matches": matches[:500]})

    def hangup(self):
        leader = self.shell
        if not leader:
            return
        for sig in (signal.SIGHUP, signal.SIGCONT):
            signal_session(leader, sig)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if self.reap(block=False):
                break
            time.sleep(0.02)
        signal_session(leader, signal.SIGKILL)
        self.reap(block=False)

    def reap(self, block):
        if not self.shell:
            return True
        try:
            pid, status = os.waitpid(self.shell, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        self.drain_output()
        code = os.waitstatus_to_exitcode(status)
        reason = self.exit_reason
        if reason is None:
            reason = f"the shell ended (signal {-code})" if code < 0 else "the shell exited"
        self.send_json(b"Q", {"status": code if code >= 0 else 128 - code, "reason": reason})
        self.shell = 0
        return True

    # -- the loop -------------------------------------------------------------------------
    def loop(self):
        os.set_blocking(self.inp, False)
        while True:
            readers = [self.inp]
            if self.master >= 0:
                readers.append(self.master)
            if self.sock is not None:
                readers.append(self.sock)
            try:
                ready, _, _ = select.select(readers, [], [], POLL)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd == self.inp:
                    self.on_input()
                elif fd == self.master:
                    try:
                        data = os.read(self.master, READ_SIZE)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data:
                        self.send(b"O", data)
                else:
                    self.on_status()
            if self.shell:
                self.check()
                if self.reap(block=False):
                    return

    def on_input(self):
        try:
            data = os.read(self.inp, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self.exit_reason = "the broker closed the session"
            self.hangup()
            self.reap(block=True)
            sys.exit(0)
        self.inbuf += data
        for kind, payload in self.frames():
            if kind == b"H":
                self.start(json.loads(payload))
            elif kind == b"R":
                self.run(payload.decode("utf-8", "surrogateescape"))
            elif kind == b"K":
                if self.running:
                    _write_all(self.master, payload)
            elif kind == b"W":
                size = json.loads(payload)
                self.resize(int(size["cols"]), int(size["rows"]))
            elif kind == b"C":
                self.complete(json.loads(payload))
            elif kind == b"X":
                self.exit_reason = "hung up by the broker"
                self.hangup()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
        except OSError:
            return


def _start_watchdog(leader):
    """A child that outlives this helper by a moment: when the helper dies however it dies
    (SIGKILL included), the pipe to it closes and it ends the shell's whole session."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.closerange(0, read_end)
            os.closerange(read_end + 1, 65536)
            while True:
                try:
                    if not os.read(read_end, 1):
                        break
                except InterruptedError:
                    continue
            for sig in (signal.SIGHUP, signal.SIGCONT, signal.SIGKILL):
                signal_session(leader, sig)
        finally:
            os._exit(0)
    os.close(read_end)
    return write_end


def _group_alive(pgrp):
    """A job that took the terminal and has ended leaves its group in the foreground; bash
    takes the terminal back only after a foreground job, so a dead group counts as gone."""
    try:
        os.killpg(pgrp, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _parent_death_hangup():
    """In the shell's child: a SIGHUP when the helper dies, however it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGHUP), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def signal_session(leader, sig):
    """SIG to every process of the shell's session (its jobs are process groups of their own)."""
    if leader <= 1:
        return
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, session.
        if len(fields) > 3 and int(fields[3]) == leader:
            try:
                os.kill(int(name), sig)
            except OSError:
                pass


_BUILTINS = (
    "alias bg bind break builtin cd command compgen complete continue declare dirs disown "
    "echo enable eval exec exit export false fc fg getopts hash help history jobs kill let "
    "local logout mapfile popd printf pushd pwd read readonly return set shift shopt source "
    "suspend test times trap true type typeset ulimit umask unalias unset wait"
).split()


def _complete_command(word):
    found = {name for name in _BUILTINS if name.startswith(word)}
    for folder in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith(word) and os.access(os.path.join(folder, name), os.X_OK):
                found.add(name)
    return sorted(found)


def _complete_path(word, cwd):
    expanded = os.path.expanduser(word) if word.startswith("~") else word
    folder, _, prefix = expanded.rpartition("/")
    shown_folder = word.rpartition("/")[0]
    base = folder if expanded.startswith("/") else os.path.join(cwd, folder)
    if expanded.startswith("/") and not folder:
        base = "/"
    try:
        names = os.listdir(base or "/")
    except OSError:
        return []
    matches = []
    for name in sorted(names):
        if not name.startswith(prefix) or (name.startswith(".") and not prefix.startswith(".")):
            continue
        full = os.path.join(base, name)
        shown = (shown_folder + "/" if "/" in word else "") + name
        matches.append(shown + ("/" if os.path.isdir(full) else ""))
    return matches


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    agent = Agent()
    try:
        agent.loop()
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.EBADF):
            raise


if __name__ == "__main__":
    main()
