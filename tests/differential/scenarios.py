"""The differential scenarios, as Python data.

Each scenario is small and deterministic.  Group ``protocol`` needs only the
QMP core and the job commands' argument checking; group ``jobs`` needs block
nodes (``blockdev-add`` with ``null-co``) and running jobs.

Helpers build the common shapes: :func:`cmd` renders a request compactly,
:func:`send` sends bytes and collects a number of messages (or until a reply
id plus a quiet period, for parser errors whose count is not known in
advance), and :func:`protocol` prefixes the connect (and, unless told
otherwise, capabilities negotiation) steps.
"""

from __future__ import annotations

from .model import (
    GROUP_PROTOCOL,
    JSON,
    EventPattern,
    Expect,
    Scenario,
    Step,
)
from .scenarios_chain import CHAIN
from .scenarios_compat import COMPAT
from .scenarios_jobs import MORE_JOBS
from .scenarios_v10 import BACKUP_ARGUMENTS, DRAIN_SCENARIOS, V10_SCENARIOS
from .steps import (
    CAPS,
    J,
    MiB,
    cmd,
    connect,
    jobs,
    negotiate,
    send,
    until_quiet,
)


def protocol(name: str, description: str, *steps: Step, negotiated: bool = True) -> Scenario:
    head = [connect()] + ([negotiate()] if negotiated else [])
    return Scenario(name, description, tuple(head + list(steps)), GROUP_PROTOCOL)


def nested(depth: int) -> bytes:
    """A request whose id nests ``depth`` levels in total, counting the request object."""
    inner = depth - 1
    return b'{"execute": "query-jobs", "id": ' + b"[" * inner + b"]" * inner + b"}\n"


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


PROTOCOL: tuple[Scenario, ...] = (
    # ------------------------------------------------------------ greeting
    protocol("greeting", "The greeting on connect.", negotiated=False),
    # ------------------------------------------------------------ negotiation mode
    protocol(
        "negotiation_command_before_capabilities",
        "A known command before qmp_capabilities is CommandNotFound, id echoed.",
        send(cmd("query-version", id=1)),
        send(cmd("query-jobs")),
        negotiated=False,
    ),
    protocol(
        "negotiation_unknown_command",
        "An unknown command in negotiation mode gets the negotiation message.",
        send(cmd("no-such-command", id="u")),
        send(cmd("no-such-command")),
        negotiated=False,
    ),
    protocol(
        "negotiation_exec_oob_before_capabilities",
        "exec-oob before negotiation is an unexpected member.",
        send(b'{"exec-oob": "query-version", "id": "o"}\n'),
        send(b'{"exec-oob": "qmp_capabilities"}\n'),
        negotiated=False,
    ),
    protocol(
        "negotiation_enable_oob",
        "qmp_capabilities with enable [oob] succeeds; commands work afterwards.",
        send(cmd("qmp_capabilities", {"enable": ["oob"]}, id="c")),
        send(cmd("query-jobs", id=1)),
        negotiated=False,
    ),
    protocol(
        "negotiation_enable_empty_list",
        "qmp_capabilities with an empty enable list.",
        send(cmd("qmp_capabilities", {"enable": []}, id="c")),
        send(cmd("query-jobs", id=1)),
        negotiated=False,
    ),
    protocol(
        "negotiation_bad_capability",
        "An unknown capability is refused and the connection stays in negotiation mode.",
        send(cmd("qmp_capabilities", {"enable": ["foo"]}, id="c")),
        send(cmd("query-jobs", id=1)),
        send(cmd("qmp_capabilities", {"enable": ["oob", "foo"]}, id="d")),
        send(CAPS),
        send(cmd("query-jobs", id=2)),
        negotiated=False,
    ),
    protocol(
        "negotiation_enable_not_a_list",
        "enable must be an array.",
        send(cmd("qmp_capabilities", {"enable": "oob"}, id="c")),
        send(cmd("qmp_capabilities", {"enable": {"oob": True}}, id="d")),
        send(cmd("qmp_capabilities", {"enable": [1]}, id="e")),
        negotiated=False,
    ),
    protocol(
        "negotiation_capabilities_extra_argument",
        "qmp_capabilities rejects unknown arguments.",
        send(cmd("qmp_capabilities", {"x": 1}, id="c")),
        send(b'{"execute": "qmp_capabilities", "arguments": [], "id": "d"}\n'),
        negotiated=False,
    ),
    protocol(
        "negotiation_envelope_errors_not_rewritten",
        "Malformed requests in negotiation mode get their own errors, not the negotiation one.",
        send(b"[]\n"),
        send(b'{"id": 3}\n'),
        send(b'{"execute": 1, "id": 4}\n'),
        send(b'{"execute": "query-jobs", "bogus": 1, "id": 5}\n'),
        until_quiet(b"{,}\n", note="a parse error"),
        negotiated=False,
    ),
    protocol(
        "negotiation_capabilities_twice",
        "qmp_capabilities in command mode is CommandNotFound.",
        send(cmd("qmp_capabilities", id="again")),
        send(cmd("qmp_capabilities", {"enable": ["oob"]})),
    ),
    # ------------------------------------------------------------ request envelope
    protocol(
        "envelope_not_an_object",
        "Non-object inputs: array, number, string, null, true.",
        send(b'[{"execute": "query-jobs", "id": 1}]\n'),
        send(b"1\n"),
        send(b'"query-jobs"\n'),
        send(b"null\n"),
        send(b"true\n"),
    ),
    protocol(
        "envelope_execute_not_a_string",
        "execute must be a string.",
        send(b'{"execute": 1, "id": 1}\n'),
        send(b'{"execute": ["query-jobs"], "id": 2}\n'),
        send(b'{"execute": null}\n'),
    ),
    protocol(
        "envelope_arguments_not_an_object",
        "arguments must be an object.",
        send(b'{"execute": "query-jobs", "arguments": [], "id": 1}\n'),
        send(b'{"execute": "query-jobs", "arguments": null, "id": 2}\n'),
        send(b'{"execute": "query-jobs", "arguments": "x"}\n'),
    ),
    protocol(
        "envelope_unexpected_member",
        "Unknown top-level members are refused, including control.",
        send(b'{"execute": "query-jobs", "foo": 1, "id": 1}\n'),
        send(b'{"execute": "query-jobs", "control": {"run-oob": true}, "id": 2}\n'),
        send(b'{"execute": "query-jobs", "ID": 3}\n'),
    ),
    protocol(
        "envelope_missing_execute",
        "Requests without execute, with and without id.",
        send(b"{}\n"),
        send(b'{"id": "no-exec"}\n'),
        send(b'{"arguments": {}, "id": 7}\n'),
    ),
    protocol(
        "envelope_execute_and_exec_oob",
        "Both execute and exec-oob, without oob negotiated.",
        send(b'{"execute": "query-jobs", "exec-oob": "query-jobs", "id": 1}\n'),
    ),
    Scenario(
        "envelope_execute_and_exec_oob_with_oob",
        "Both execute and exec-oob, with oob negotiated.",
        (
            connect(),
            send(cmd("qmp_capabilities", {"enable": ["oob"]})),
            send(b'{"execute": "query-jobs", "exec-oob": "query-jobs", "id": 1}\n'),
        ),
    ),
    Scenario(
        "envelope_exec_oob_after_oob_negotiation",
        "exec-oob of commands that do not allow OOB, after enabling oob.",
        (
            connect(),
            send(cmd("qmp_capabilities", {"enable": ["oob"]})),
            send(b'{"exec-oob": "query-jobs", "id": "o1"}\n'),
            send(b'{"exec-oob": "query-version"}\n'),
            send(b'{"exec-oob": "no-such-command", "id": "o2"}\n'),
            send(b'{"exec-oob": 5, "id": "o3"}\n'),
            send(cmd("query-jobs", id="inband")),
        ),
    ),
    protocol(
        "envelope_exec_oob_without_oob",
        "exec-oob in command mode when oob was not enabled.",
        send(b'{"exec-oob": "query-jobs", "id": "o"}\n'),
    ),
    protocol(
        "envelope_unknown_command",
        "Unknown commands in command mode, with and without id, and the empty name.",
        send(cmd("no-such-command", id="x")),
        send(cmd("no-such-command")),
        send(cmd("", id="empty")),
        send(cmd("query-jobs ", id="space")),
    ),
    # ------------------------------------------------------------ id echo
    protocol(
        "id_falsy_values",
        "Ids 0, false, null and the empty string are echoed.",
        send(cmd("query-jobs", id=0)),
        send(cmd("query-jobs", id=False)),
        send(cmd("query-jobs", id=None)),
        send(cmd("query-jobs", id="")),
    ),
    protocol(
        "id_containers",
        "Array and object ids are echoed.",
        send(cmd("query-jobs", id=[])),
        send(cmd("query-jobs", id=[1, "two", None, [3]])),
        send(cmd("query-jobs", id={})),
        send(cmd("query-jobs", id={"a": {"b": [True, False]}, "c": "d"})),
    ),
    protocol(
        "id_floats",
        "Float ids: 0.1, 1e5, -0.0, 1.5, 1e-7.",
        send(b'{"execute": "query-jobs", "id": 0.1}\n'),
        send(b'{"execute": "query-jobs", "id": 1e5}\n'),
        send(b'{"execute": "query-jobs", "id": -0.0}\n'),
        send(b'{"execute": "query-jobs", "id": 1.5}\n'),
        send(b'{"execute": "query-jobs", "id": 1E-7}\n'),
    ),
    protocol(
        "id_big_integers",
        "Integer ids at the int64/uint64 edges and beyond.",
        send(cmd("query-jobs", id=INT64_MAX)),
        send(cmd("query-jobs", id=INT64_MIN)),
        send(cmd("query-jobs", id=INT64_MAX + 1)),
        send(cmd("query-jobs", id=UINT64_MAX)),
        send(cmd("query-jobs", id=UINT64_MAX + 1)),
        send(cmd("query-jobs", id=INT64_MIN - 1)),
        send(cmd("query-jobs", id=10**20)),
    ),
    protocol(
        "id_strings",
        "String ids with non-ASCII, escapes and control characters.",
        send('{"execute": "query-jobs", "id": "caf\u00e9 \u65e5\u672c"}\n'.encode()),
        send(cmd("query-jobs", id="\U0001f600")),
        send(cmd("query-jobs", id='tab\there\nnl \x1f / \\ "')),
        send(b'{"execute": "query-jobs", "id": "nul\\u0000nul"}\n'),
    ),
    protocol(
        "id_on_error_replies",
        "The id is echoed on argument and lookup errors.",
        send(cmd("query-jobs", {"x": 1}, id={"k": [0]})),
        send(cmd("job-pause", {"id": "nope"}, id=False)),
    ),
    # ------------------------------------------------------------ queries
    protocol(
        "query_version",
        "query-version (micro and package normalised).",
        send(cmd("query-version", id=1)),
    ),
    protocol(
        "query_commands_shape",
        "query-commands returns a list of {name}; compared by shape only.",
        send(cmd("query-commands", id=1), shape=("commands",)),
    ),
    protocol(
        "query_jobs_empty",
        "query-jobs and query-block-jobs with no jobs.",
        send(cmd("query-jobs", id=1)),
        send(cmd("query-block-jobs", id=2)),
        send(cmd("query-jobs", {}, id=3)),
    ),
    # ------------------------------------------------------------ argument errors
    protocol(
        "args_query_jobs_extra_argument",
        "A command without arguments still rejects extras.",
        send(cmd("query-jobs", {"x": 1}, id=1)),
        send(cmd("query-block-jobs", {"device": "j"}, id=2)),
    ),
    protocol(
        "args_job_pause_missing_id",
        "job-pause without id.",
        send(cmd("job-pause", id=1)),
        send(cmd("job-pause", {}, id=2)),
    ),
    protocol(
        "args_job_pause_id_wrong_type",
        "job-pause with a non-string id.",
        send(cmd("job-pause", {"id": 1}, id=1)),
        send(cmd("job-pause", {"id": None}, id=2)),
        send(cmd("job-pause", {"id": ["j"]}, id=3)),
    ),
    protocol(
        "args_set_speed_wrong_types",
        "block-job-set-speed with speed as string and float, and missing members.",
        send(cmd("block-job-set-speed", {"device": "j", "speed": "1"}, id=1)),
        send(cmd("block-job-set-speed", {"device": "j", "speed": 1.5}, id=2)),
        send(cmd("block-job-set-speed", {"device": "j", "speed": 1e3}, id=3)),
        send(cmd("block-job-set-speed", {"device": "j"}, id=4)),
        send(cmd("block-job-set-speed", {"speed": 0}, id=5)),
        send(cmd("block-job-set-speed", {"device": "j", "speed": 2**64}, id=6)),
    ),
    protocol(
        "args_block_job_cancel_force_wrong_type",
        "block-job-cancel with force as a string or a number.",
        send(cmd("block-job-cancel", {"device": "j", "force": "yes"}, id=1)),
        send(cmd("block-job-cancel", {"device": "j", "force": 1}, id=2)),
    ),
    protocol(
        "args_job_verbs_unknown_job",
        "job-* verbs on an unknown job id.",
        *(
            send(cmd(c, {"id": "nope"}, id=c))
            for c in (
                "job-pause",
                "job-resume",
                "job-cancel",
                "job-complete",
                "job-finalize",
                "job-dismiss",
            )
        ),
    ),
    protocol(
        "args_block_job_verbs_unknown_job",
        "block-job-* verbs on an unknown job: DeviceNotActive.",
        send(cmd("block-job-pause", {"device": "nope"}, id=1)),
        send(cmd("block-job-resume", {"device": "nope"}, id=2)),
        send(cmd("block-job-cancel", {"device": "nope"}, id=3)),
        send(cmd("block-job-cancel", {"device": "nope", "force": True}, id=4)),
        send(cmd("block-job-complete", {"device": "nope"}, id=5)),
        send(cmd("block-job-set-speed", {"device": "nope", "speed": 0}, id=6)),
        send(cmd("block-job-finalize", {"id": "nope"}, id=7)),
        send(cmd("block-job-dismiss", {"id": "nope"}, id=8)),
    ),
    protocol(
        "args_block_job_dismiss_uses_id",
        "block-job-dismiss and block-job-finalize take id, not device.",
        send(cmd("block-job-dismiss", {"device": "nope"}, id=1)),
        send(cmd("block-job-finalize", {"device": "nope"}, id=2)),
    ),
    protocol(
        "args_unknown_job_with_bad_argument",
        "Argument errors come before job lookup.",
        send(cmd("job-cancel", {"id": "nope", "force": True}, id=1)),
        send(cmd("block-job-set-speed", {"device": "nope", "speed": -1}, id=2)),
    ),
    # ------------------------------------------------------------ JSON parser
    protocol(
        "json_stray_bytes",
        "Stray characters outside any token, then a valid command.",
        until_quiet(b"@\n", cmd("query-jobs", id="after"), reply_id="after"),
    ),
    protocol(
        "json_control_byte_resync",
        "A control byte in the middle of a request resynchronises the parser.",
        until_quiet(b'{"execute": \x01', cmd("query-jobs", id="after"), reply_id="after"),
    ),
    protocol(
        "json_leading_zero_and_bad_numbers",
        "Numbers with a leading zero and a bare minus.",
        until_quiet(b'{"execute": "query-jobs", "id": 01}\n', cmd("query-jobs", id=1), reply_id=1),
        until_quiet(b'{"execute": "query-jobs", "id": -j}\n', cmd("query-jobs", id=2), reply_id=2),
    ),
    protocol(
        "json_single_quotes",
        "Single-quoted strings and the \\' escape are accepted.",
        send(b"{'execute': 'query-jobs', 'id': 'sq'}\n"),
        send(b'{"execute": "query-jobs", "id": \'it\\\'s "q"\'}\n'),
    ),
    protocol(
        "json_bad_escape",
        "Unknown backslash escapes.",
        until_quiet(
            b'{"execute": "query-jobs", "id": "a\\qb"}\n', cmd("query-jobs", id=1), reply_id=1
        ),
    ),
    protocol(
        "json_bad_unicode_escapes",
        "A lone surrogate and \\uffff in strings.",
        until_quiet(
            b'{"execute": "query-jobs", "id": "\\ud83d"}\n', cmd("query-jobs", id=1), reply_id=1
        ),
        until_quiet(
            b'{"execute": "query-jobs", "id": "\\uffff"}\n', cmd("query-jobs", id=2), reply_id=2
        ),
        send(b'{"execute": "query-jobs", "id": "\\ud83d\\ude00"}\n', note="a valid pair"),
    ),
    protocol(
        "json_bad_utf8",
        "Invalid UTF-8 inside a string, and an overlong encoding.",
        until_quiet(
            b'{"execute": "query-jobs", "id": "a\xffb"}\n', cmd("query-jobs", id=1), reply_id=1
        ),
        until_quiet(
            b'{"execute": "query-jobs", "id": "\xc0\xaf"}\n', cmd("query-jobs", id=2), reply_id=2
        ),
    ),
    protocol(
        "json_bom_and_high_bytes",
        "A UTF-8 BOM and 0xFF outside strings; 0x7F is skipped.",
        until_quiet(b"\xef\xbb\xbf" + cmd("query-jobs", id=1), reply_id=1),
        until_quiet(b"\xff" + cmd("query-jobs", id=2), reply_id=2),
        until_quiet(b"\x7f" + cmd("query-jobs", id=3), reply_id=3),
    ),
    protocol(
        "json_syntax_errors",
        "Missing colon, missing comma, non-string key, duplicate key, bad keyword.",
        until_quiet(b'{"execute" "query-jobs"}\n', cmd("query-jobs", id=1), reply_id=1),
        until_quiet(b'{"execute": "query-jobs" "id": 2}\n', cmd("query-jobs", id=2), reply_id=2),
        until_quiet(b'{1: "query-jobs"}\n', cmd("query-jobs", id=3), reply_id=3),
        until_quiet(
            b'{"execute": "query-jobs", "execute": "query-jobs"}\n',
            cmd("query-jobs", id=4),
            reply_id=4,
        ),
        until_quiet(b'{"execute": "query-jobs", "id": tru}\n', cmd("query-jobs", id=5), reply_id=5),
        until_quiet(
            b'{"execute": "query-jobs", "id": [1 2]}\n', cmd("query-jobs", id=6), reply_id=6
        ),
    ),
    protocol(
        "json_mismatched_brackets",
        "Closing with the wrong bracket; framing counts braces and brackets apart.",
        send(b'{"execute": "query-jobs", "id": [1}\n', n=0, quiet_ms=100, note="still open"),
        until_quiet(b"]\n", cmd("query-jobs", id=1), reply_id=1, note="now balanced"),
        until_quiet(b'{"execute": "query-jobs"]\n', cmd("query-jobs", id=2), reply_id=2),
    ),
    protocol(
        "json_raw_tab_in_string",
        "A raw TAB inside a string is a lexical error.",
        until_quiet(
            b'{"execute": "query-jobs", "id": "a\tb"}\n', cmd("query-jobs", id=1), reply_id=1
        ),
    ),
    protocol(
        "json_depth_1024",
        "Exactly 1024 levels of nesting (counting the request) are accepted.",
        send(nested(1024)),
    ),
    protocol(
        "json_depth_1025",
        "1025 levels exceed the nesting limit; the rest is parsed again.",
        until_quiet(nested(1025), cmd("query-jobs", id="after"), reply_id="after"),
    ),
    protocol(
        "json_unterminated_object_then_valid",
        "An unterminated request swallows the next one until a control byte.",
        send(b'{"execute": "query-jobs", "id": 1\n', n=0, quiet_ms=100, note="nothing yet"),
        send(cmd("query-jobs", id=2), n=0, quiet_ms=100, note="still inside the first"),
        send(b"\x01", n=None, quiet_ms=100, note="resynchronise whatever is left"),
        send(cmd("query-jobs", id=3)),
    ),
    protocol(
        "json_unterminated_string_then_valid",
        "A raw newline inside an unterminated string is a lexical error at once.",
        send(b'{"execute": "query-jobs", "id": "open\n', n=0, quiet_ms=100),
        until_quiet(cmd("query-jobs", id=2), note="parsed normally"),
        send(b"\x01", n=None, quiet_ms=100),
        send(cmd("query-jobs", id=3)),
    ),
    protocol(
        "json_two_commands_one_line",
        "Two requests on one line give two replies, in order.",
        send(b'{"execute": "query-jobs", "id": 1}{"execute": "query-block-jobs", "id": 2}\n', n=2),
        send(b'{"execute": "query-jobs", "id": 3} {"execute": "nope", "id": 4}\n', n=2),
    ),
    protocol(
        "json_split_across_sends",
        "One request split across several sends.",
        send(b'{"exec', b'ute": "query-', b'jobs", "i', b'd": "split"}', b"\n", gap_ms=30),
        send(
            b'{"execute": "query-jobs", "id": "caf\xc3', b'\xa9"}\n', gap_ms=30, note="inside UTF-8"
        ),
    ),
    protocol(
        "json_crlf_and_whitespace",
        "CRLF line ends and whitespace-only input.",
        send(b'{"execute": "query-jobs", "id": 1}\r\n'),
        send(b" \t\r\n\r\n  \n", n=0, quiet_ms=100, note="whitespace gives no reply"),
        send(b'\r\n{\r\n"execute"\r\n:\r\n"query-jobs", "id": 2}\r\n'),
    ),
    protocol(
        "json_no_newline",
        "Requests without any trailing newline.",
        send(b'{"execute": "query-jobs", "id": 1}'),
        send(b'{"execute": "query-jobs", "id": 2}'),
    ),
    protocol(
        "json_top_level_scalars_mixed",
        "Top-level scalars and a request in one send.",
        until_quiet(b'1 "a" [] {"execute": "query-jobs", "id": 9}\n', reply_id=9),
    ),
    # ------------------------------------------------------------ quit, monitors
    protocol(
        "quit",
        "quit replies and the connection reaches EOF.",
        send(cmd("quit", id="q"), eof=True),
    ),
    Scenario(
        "two_monitors_independent_negotiation",
        "Two connections: negotiation state is per connection.",
        (
            connect(0),
            connect(1),
            negotiate(0),
            send(cmd("query-jobs", id="c0"), conn=0),
            send(cmd("query-jobs", id="c1"), conn=1),
            negotiate(1),
            send(cmd("query-jobs", id="c1b"), conn=1),
        ),
        connections=2,
    ),
    Scenario(
        "two_monitors_quit",
        "quit on one connection closes the other too.",
        (
            connect(0),
            connect(1),
            negotiate(0),
            negotiate(1),
            send(cmd("quit", id="q"), conn=0, eof=True, also={1: Expect(eof=True)}),
        ),
        connections=2,
    ),
)


# ---------------------------------------------------------------------- jobs


def job_step(
    request: bytes,
    reply_id: JSON,
    *events: EventPattern,
    conn: int = 0,
    watchers: tuple[int, ...] = (),
    note: str = "",
) -> Step:
    """Send a job command, wait for its reply and for ``events`` (on every watcher too)."""
    expect = {conn: Expect(reply_id=reply_id, events=events, timeout_s=5.0)}
    for w in watchers:
        expect[w] = Expect(events=events, timeout_s=5.0)
    return Step(conn, "send", (request,), expect, note=note)


def null_node(name: str, size: int = MiB) -> dict[str, JSON]:
    return {"driver": "null-co", "node-name": name, "size": size, "read-zeroes": True}


def job_setup(conns: int = 1) -> list[Step]:
    steps = []
    for k in range(conns):
        steps += [connect(k), negotiate(k)]
    steps += [
        send(cmd("blockdev-add", null_node("src"), id="add-src")),
        send(cmd("blockdev-add", null_node("tgt"), id="add-tgt")),
    ]
    return steps


def backup(**extra: JSON) -> bytes:
    """blockdev-backup of src to tgt as job j1; ``extra`` overrides or adds arguments."""
    args: dict[str, JSON] = {"job-id": "j1", "device": "src", "target": "tgt", "sync": "full"}
    args.update(extra)
    return cmd("blockdev-backup", args, id="backup")


JOBS: tuple[Scenario, ...] = (
    jobs(
        "jobs_blockdev_add_null_co",
        "null-co nodes: add, duplicate name, bad arguments, delete.",
        [
            *job_setup(),
            send(cmd("blockdev-add", null_node("src"), id="dup")),
            send(cmd("blockdev-add", {"driver": "nope", "node-name": "x"}, id="bad-driver")),
            send(cmd("blockdev-add", {**null_node("y"), "bogus": 1}, id="bad-member")),
            send(cmd("blockdev-del", {"node-name": "tgt"}, id="del")),
            send(cmd("blockdev-del", {"node-name": "tgt"}, id="del-again")),
        ],
    ),
    jobs(
        "jobs_backup_defaults",
        "A backup with default options runs to the end and is dismissed.",
        [
            *job_setup(),
            job_step(backup(), "backup", J("null")),
            send(cmd("query-jobs", id="q")),
        ],
    ),
    jobs(
        "jobs_backup_manual_finalize_dismiss",
        "auto-finalize/auto-dismiss false: PENDING, job-finalize, CONCLUDED, job-dismiss.",
        [
            *job_setup(),
            job_step(
                backup(**{"auto-finalize": False, "auto-dismiss": False}),
                "backup",
                J("pending"),
                EventPattern("BLOCK_JOB_PENDING", {"id": "j1"}),
            ),
            send(cmd("query-jobs", id="q-pending")),
            send(cmd("query-block-jobs", id="qb-pending")),
            job_step(cmd("job-finalize", {"id": "j1"}, id="fin"), "fin", J("concluded")),
            send(cmd("query-jobs", id="q-concluded")),
            job_step(cmd("job-dismiss", {"id": "j1"}, id="dis"), "dis", J("null")),
            send(cmd("query-jobs", id="q-empty")),
        ],
    ),
    jobs(
        "jobs_verbs_on_pending_and_concluded",
        "Verb errors on a PENDING job, then on a CONCLUDED one.",
        [
            *job_setup(),
            job_step(
                backup(**{"auto-finalize": False, "auto-dismiss": False}),
                "backup",
                EventPattern("BLOCK_JOB_PENDING", {"id": "j1"}),
            ),
            send(cmd("job-pause", {"id": "j1"}, id="pause-p")),
            send(cmd("job-resume", {"id": "j1"}, id="resume-p")),
            send(cmd("job-complete", {"id": "j1"}, id="complete-p")),
            send(cmd("job-dismiss", {"id": "j1"}, id="dismiss-p")),
            send(cmd("block-job-set-speed", {"device": "j1", "speed": 1}, id="speed-p")),
            send(cmd("block-job-dismiss", {"id": "j1"}, id="bdismiss-p")),
            job_step(cmd("block-job-finalize", {"id": "j1"}, id="fin"), "fin", J("concluded")),
            send(cmd("job-cancel", {"id": "j1"}, id="cancel-c")),
            send(cmd("job-finalize", {"id": "j1"}, id="finalize-c")),
            send(cmd("job-pause", {"id": "j1"}, id="pause-c")),
            send(cmd("block-job-cancel", {"device": "j1", "force": True}, id="bcancel-c")),
            job_step(cmd("block-job-dismiss", {"id": "j1"}, id="dis"), "dis", J("null")),
            send(cmd("job-dismiss", {"id": "j1"}, id="dismiss-gone")),
        ],
    ),
    jobs(
        "jobs_cancel_paused",
        "A sync=none backup is paused; soft cancel is refused; job-cancel aborts it.",
        [
            *job_setup(),
            job_step(
                backup(sync="none", **{"auto-dismiss": False}), "backup", J("paused"), J("running")
            ),
            job_step(cmd("job-pause", {"id": "j1"}, id="pause"), "pause", J("paused")),
            send(cmd("query-jobs", id="q-paused")),
            send(cmd("block-job-cancel", {"device": "j1"}, id="soft")),
            send(cmd("block-job-cancel", {"device": "j1", "force": False}, id="soft2")),
            job_step(
                cmd("job-cancel", {"id": "j1"}, id="cancel"),
                "cancel",
                EventPattern("BLOCK_JOB_CANCELLED", {"device": "j1"}),
                J("concluded"),
            ),
            send(cmd("query-jobs", id="q-concluded")),
            job_step(cmd("job-dismiss", {"id": "j1"}, id="dis"), "dis", J("null")),
        ],
        progress=True,
    ),
    jobs(
        "jobs_two_monitors_same_events",
        "Two negotiated monitors both see a backup's events, in the same order.",
        [
            *job_setup(2),
            job_step(
                backup(**{"auto-finalize": False}),
                "backup",
                EventPattern("BLOCK_JOB_PENDING", {"id": "j1"}),
                watchers=(1,),
            ),
            job_step(cmd("job-finalize", {"id": "j1"}, id="fin"), "fin", J("null"), watchers=(1,)),
            send(cmd("query-jobs", id="q"), conn=1),
        ],
        connections=2,
        same_events=(0, 1),
    ),
)


ALL: tuple[Scenario, ...] = (
    PROTOCOL
    + JOBS
    + MORE_JOBS
    + CHAIN
    + COMPAT
    + V10_SCENARIOS
    + DRAIN_SCENARIOS
    + BACKUP_ARGUMENTS
)
BY_NAME: dict[str, Scenario] = {s.name: s for s in ALL}
assert len(BY_NAME) == len(ALL), "scenario names must be unique"
