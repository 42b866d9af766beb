"""Provides the conntrack table: a fast reader, Flow parsing, flows matched to forwards, and kill.

- `flow`: Flow and Tuple, the kernel's line format parsed in one regex pass;
- `read`: the readers: ctnetlink (`dump`), /proc/net/nf_conntrack, `conntrack -L -o extended`
  where the kernel has neither; the table's fill and the accounting switch;
- `dump`: the ctnetlink dump, decoded straight into rows or into `natbox conntrack`'s lines;
- `select`: which forward a flow belongs to, the filters and sorts of the CLI and the viewer;
- `netlink`: kill by tuple over ctnetlink.

`from natbox import conntrack` gives all of it, as before the split.
"""

from __future__ import annotations

from natbox.conntrack.flow import Flow, Tuple, parse_generic
from natbox.conntrack.netlink import PROTO_NUMBERS, delete_message, kill
from natbox.conntrack.read import (
    CHUNK,
    HEAD,
    PROC_CONNTRACK,
    PROC_NETFILTER,
    READER_ENV,
    Fill,
    FlowRead,
    enable_accounting,
    parse_lines,
    parse_text,
    read_flows,
    read_netlink,
    reader,
    table_fill,
)
from natbox.conntrack.select import (
    SORT_KEYS,
    TEXT_HEADER,
    ForwardIndex,
    find,
    locate,
    parse_tuple,
    select,
    text_lines,
)

__all__ = [
    "CHUNK",
    "HEAD",
    "PROC_CONNTRACK",
    "PROC_NETFILTER",
    "PROTO_NUMBERS",
    "READER_ENV",
    "SORT_KEYS",
    "TEXT_HEADER",
    "Fill",
    "Flow",
    "FlowRead",
    "ForwardIndex",
    "Tuple",
    "delete_message",
    "enable_accounting",
    "find",
    "kill",
    "locate",
    "parse_generic",
    "parse_lines",
    "parse_text",
    "parse_tuple",
    "read_flows",
    "read_netlink",
    "reader",
    "select",
    "table_fill",
    "text_lines",
]
