"""scripts/gen_reference.py (the API and SDK references) and scripts/docs_hooks.py.

The drift check itself is `make check-gen`; these pin what the pages say:
comments on the right fields, types linked to their anchors, anchors the
docs site makes the same way, Markdown that does not mangle the text.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen = _load("gen_reference")
hooks = _load("docs_hooks")

F = descriptor_pb2.FieldDescriptorProto
PKG = ".ecosystem.v1"


def _file() -> descriptor_pb2.FileDescriptorProto:
    """A proto file as protoc describes it with --include_source_info."""
    fd = descriptor_pb2.FileDescriptorProto(name="ecosystem/v1/demo.proto", package="ecosystem.v1")
    svc = fd.service.add(name="DemoService")
    svc.method.add(
        name="GetThing",
        input_type=PKG + ".GetThingRequest",
        output_type=PKG + ".Thing",
    )
    svc.method.add(
        name="WatchThings",
        input_type=PKG + ".GetThingRequest",
        output_type=PKG + ".Thing",
        server_streaming=True,
    )
    req = fd.message_type.add(name="GetThingRequest")
    req.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    thing = fd.message_type.add(name="Thing")
    thing.field.add(
        name="labels",
        number=1,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=PKG + ".Thing.LabelsEntry",
    )
    thing.field.add(
        name="kind",
        number=2,
        type=F.TYPE_ENUM,
        label=F.LABEL_OPTIONAL,
        type_name=PKG + ".Kind",
    )
    thing.field.add(
        name="parts",
        number=3,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=PKG + ".Thing.Part",
    )
    thing.field.add(
        name="every", number=4, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL, oneof_index=0
    )
    thing.oneof_decl.add(name="schedule")
    entry = thing.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    thing.nested_type.add(name="Part").field.add(
        name="size", number=1, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL
    )
    kind = fd.enum_type.add(name="Kind")
    kind.value.add(name="KIND_UNSPECIFIED", number=0)
    kind.value.add(name="KIND_BIG", number=1)

    def comment(path: list[int], text: str) -> None:
        fd.source_code_info.location.add(path=path, leading_comments=text)

    comment([6, 0], ' Things, by name.\n Patterns: "*" is one token, ">" the rest.\n')
    comment([6, 0, 2, 1], " Every change to a thing; `<name>` may be empty.\n")
    comment([4, 1, 2, 0], " Free-form | labels.\n")
    comment([4, 1, 2, 3], " Seconds between runs.\n")
    comment([4, 1, 3, 1], " One piece of a thing.\n")
    comment([5, 0, 2, 1], " A big one.\n")
    return fd


def _page() -> str:
    api = gen._collect(descriptor_pb2.FileDescriptorSet(file=[_file()]))
    (page,) = api.pages
    return str(gen._render_page(api, page))


def test_api_page_has_every_service_rpc_message_field_and_enum_with_its_comment() -> None:
    page = _page()
    assert "## DemoService" in page
    assert 'Patterns: "\\*" is one token, "&gt;" the rest.' in page
    assert "### DemoService.WatchThings" in page
    rpc = "`WatchThings`([`GetThingRequest`](#getthingrequest)) returns (stream [`Thing`](#thing))"
    assert rpc in page
    # The comment of the code span is kept as written, HTML-looking text and all.
    assert "Every change to a thing; `<name>` may be empty." in page
    assert "| `labels` | 1 | map&lt;`string`, `string`&gt; | Free-form \\| labels. |" in page
    assert "| `kind` | 2 | [`Kind`](#kind) |  |" in page
    assert "| `parts` | 3 | repeated [`Thing.Part`](#thingpart) |  |" in page
    assert "| `every` | 4 | `int64` | One of `schedule`. Seconds between runs. |" in page
    assert "### Thing.Part\n\nOne piece of a thing." in page
    assert "| `KIND_BIG` | 1 | A big one. |" in page
    # A map's entry type is not a message of its own on the page.
    assert "LabelsEntry" not in page


def test_anchors_are_the_ones_the_docs_site_makes() -> None:
    for heading in ("DemoService.WatchThings", "Thing.Part", "eco dev --from DIR", "sdk.lowlevel"):
        assert gen._slug(heading) == hooks.slugify(heading)
    assert hooks.slugify("`eco dev --from DIR`") == "eco-dev---from-dir"
    ids: set[str] = set()
    assert [hooks.unique("errors", ids) for _ in range(3)] == ["errors", "errors-1", "errors-2"]


def test_markdown_of_comments() -> None:
    assert gen._escape("a <b> * `x * <y>`") == "a &lt;b&gt; \\* `x * <y>`"
    assert gen._escape("*emphasis*", stars=False) == "*emphasis*"
    block = gen._block("Two tiers:\n- core: fast\n  and lossy\n- durable: kept\nOrder is kept.")
    assert block == "Two tiers:\n\n- core: fast\n  and lossy\n- durable: kept\n\nOrder is kept."
    assert (
        gen._cell("One.\n- a\n- b\n\nTwo | three.") == "One. <br>- a <br>- b<br><br>Two \\| three."
    )
    assert gen._rst("See :meth:`AsyncClient.watch` and ``close()``::") == (
        "See `AsyncClient.watch` and `close()`:"
    )


class Colour(enum.Enum):
    RED = "red"


def _example(name: str, *, colour: Colour = Colour.RED, tags: list[str] | None = None) -> int:
    return 0


def test_signatures_show_annotations_as_written_and_wrap_when_long() -> None:
    assert gen._signature("f", _example) == (
        "f(name: str, *, colour: Colour = Colour.RED, tags: list[str] | None = None) -> int"
    )
    assert gen._signature("f", _example, width=20) == (
        "f(\n    name: str,\n    *,\n    colour: Colour = Colour.RED,\n"
        "    tags: list[str] | None = None,\n) -> int"
    )


def test_fenced_blocks_in_list_items_reach_the_left_margin_and_others_are_left_alone() -> None:
    markdown = (
        "- **Its own CA**, then\n"
        "\n"
        "  ```sh\n"
        "  eco controlplane \\\n"
        "    --tls-ca ca.pem\n"
        "  ```\n"
        "\n"
        "  It issues itself a certificate.\n"
        "```markdown\n"
        "  ```sh\n"
        "  kept as written inside a block at the margin\n"
        "  ```\n"
        "```\n"
    )
    assert hooks.dedent_fences(markdown) == (
        "- **Its own CA**, then\n"
        "\n"
        "```sh\n"
        "eco controlplane \\\n"
        "  --tls-ca ca.pem\n"
        "```\n"
        "\n"
        "  It issues itself a certificate.\n"
        "```markdown\n"
        "  ```sh\n"
        "  kept as written inside a block at the margin\n"
        "  ```\n"
        "```\n"
    )
