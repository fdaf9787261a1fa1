"""Sanitise the HTML body of a mail for display in the webmail. Pure, no I/O.

`sanitize_html` takes untrusted HTML (the decoded text/html part of a message) and returns markup
that keeps ordinary mail formatting but can run no script, load nothing but what it is allowed to,
and submit nothing. It never raises on any string input.

The work is done by ammonia (through the `nh3` binding), which parses with a real HTML5 parser
(html5ever) and serialises a fresh tree from an allowlist, so what the browser parses back is the
tree that was checked. On top of ammonia's defaults this module:

* allows only a fixed set of mail-formatting tags and attributes (no `id`, `name` or `class`, so the
  message cannot clobber the page's DOM or borrow its styles);
* removes with all their content the elements whose content is not displayable text (script,
  style, svg, math, iframe, object, ...);
* allows only the URL schemes http, https, mailto and cid (RFC 2392); relative URLs are dropped,
  since a mail has no base URL and they would resolve against the webmail itself;
* keeps `style` attributes only through a strict property and value allowlist (no `url()`, no
  `expression()`, no escapes, no comments, nothing positioned);
* drops the `src` of remote (http/https) images unless `allow_remote_images`, keeping the `<img>`
  element itself (with its alt text, so the layout and the alt remain), and counts them;
* gives every link `target="_blank"` and `rel="noopener noreferrer"`.

Input longer than MAX_HTML_CHARS characters is cut before sanitising, so the work per call is bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nh3

# 2 Mi characters. Counted in characters, not UTF-8 bytes, so the cut is a slice and never splits a
# character: 2 MiB for the mostly-ASCII HTML of typical mail, up to 4 times that in UTF-8 for text in
# other scripts. A cut may fall inside a tag: the HTML parser drops a tag left open at end of input.
MAX_HTML_CHARS = 2 * 1024 * 1024

# Longest style attribute value kept; mail styles are short and a huge one is only work to filter.
MAX_STYLE_CHARS = 4096

ALLOWED_TAGS: frozenset[str] = frozenset(
    {
        "a",
        "b",
        "big",
        "blockquote",
        "br",
        "caption",
        "center",
        "code",
        "dd",
        "div",
        "dl",
        "dt",
        "em",
        "font",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "li",
        "ol",
        "p",
        "pre",
        "s",
        "small",
        "span",
        "strike",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "u",
        "ul",
    }
)

# Removed together with everything inside them. Other unknown tags are unwrapped (their text kept),
# but the content of these is code, raw text or foreign markup (svg/math, where the parser's
# namespace rules have been the root of mutation-XSS bugs), never something to show.
REMOVED_WITH_CONTENT: frozenset[str] = frozenset(
    {
        "applet",
        "embed",
        "frame",
        "frameset",
        "iframe",
        "math",
        "noembed",
        "noframes",
        "noscript",
        "object",
        "plaintext",
        "script",
        "style",
        "svg",
        "template",
        "title",
        "xmp",
    }
)

# Attributes allowed per tag; "*" applies to every allowed tag. None of them can hold script: URL
# attributes (href, src) are checked by scheme, and style goes through _filter_style.
ALLOWED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "*": frozenset({"align", "dir", "style", "title"}),
    "a": frozenset({"href"}),
    "img": frozenset({"alt", "height", "src", "width"}),
    "font": frozenset({"color", "face", "size"}),
    "ol": frozenset({"start"}),
    "table": frozenset({"bgcolor", "border", "cellpadding", "cellspacing", "width"}),
    "td": frozenset({"bgcolor", "colspan", "height", "rowspan", "valign", "width"}),
    "th": frozenset({"bgcolor", "colspan", "height", "rowspan", "valign", "width"}),
    "tr": frozenset({"bgcolor", "valign"}),
}

ALLOWED_URL_SCHEMES: frozenset[str] = frozenset({"http", "https", "mailto", "cid"})

# CSS properties that only change how text and boxes look. Deliberately absent: anything that takes
# a URL (background, background-image, list-style-image, border-image, cursor, content), anything
# that can lift the message out of its frame over the webmail's own UI (position, z-index, display,
# float, transform), and legacy hooks that ran code (behavior, -moz-binding).
ALLOWED_CSS_PROPERTIES: frozenset[str] = frozenset(
    {
        "background-color",
        "border",
        "border-bottom",
        "border-collapse",
        "border-color",
        "border-left",
        "border-radius",
        "border-right",
        "border-spacing",
        "border-style",
        "border-top",
        "border-width",
        "color",
        "direction",
        "font-family",
        "font-size",
        "font-style",
        "font-variant",
        "font-weight",
        "height",
        "letter-spacing",
        "line-height",
        "list-style-type",
        "margin",
        "margin-bottom",
        "margin-left",
        "margin-right",
        "margin-top",
        "max-width",
        "min-width",
        "padding",
        "padding-bottom",
        "padding-left",
        "padding-right",
        "padding-top",
        "text-align",
        "text-decoration",
        "text-indent",
        "text-transform",
        "vertical-align",
        "white-space",
        "width",
        "word-spacing",
    }
)

# A CSS value made only of plain tokens: words, numbers, lengths, percentages, #colours, commas,
# quoted font names of plain characters, and the colour functions rgb()/rgba()/hsl()/hsla() with
# numeric arguments; optionally `!important`. With no backslash (CSS escapes), no `*` or `/` outside
# a colour function (comments), no `:` and no other function, neither url() nor expression() nor
# anything that hides them can be written. re.ASCII keeps IGNORECASE from matching look-alike
# letters such as U+017F for "s"; the atomic group and possessive quantifier (Python 3.11+) keep the
# match linear, where nested repetition of `[...]+\s*` could otherwise backtrack exponentially. The
# colour functions come first because the atomic group never returns to try a later alternative.
_CSS_TOKEN = r"""(?:(?:rgba?|hsla?)\([0-9.%,/ ]*\)|[#a-z0-9.%+-]+|'[a-z0-9 _.,-]*'|"[a-z0-9 _.,-]*"|,)"""
_CSS_VALUE = re.compile(rf"^(?:(?>{_CSS_TOKEN})\s*+)+(?:!\s*important)?$", re.IGNORECASE | re.ASCII)
_CSS_PROPERTY = re.compile(r"^[a-z-]+$", re.ASCII)

# The scheme of an absolute URL as a browser reads it (WHATWG URL): leading C0 controls and spaces
# are skipped, and tabs and newlines anywhere are ignored.
_URL_SCHEME = re.compile(r"^[\x00-\x20]*([a-z][a-z0-9+.\-\t\n\r]*):", re.IGNORECASE | re.ASCII)

_SURROGATES = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class SanitizedHtml:
    html: str
    blocked_remote_images: int


def sanitize_html(html: str, *, allow_remote_images: bool = False) -> SanitizedHtml:
    """Return `html` reduced to safe mail formatting, with remote images blocked unless allowed."""
    blocked = 0

    def filter_attribute(tag: str, attribute: str, value: str) -> str | None:
        # Called by ammonia for each attribute that passed its own allowlist and scheme checks.
        # It must not raise: ammonia would drop the attribute and report to sys.unraisablehook.
        nonlocal blocked
        if attribute == "style":
            return _filter_style(value)
        if tag == "img" and attribute == "src":
            scheme = _url_scheme(value)
            if scheme == "cid":
                return value  # a part of this same message (RFC 2392): nothing leaves the server
            if scheme in ("http", "https"):
                if allow_remote_images:
                    return value
                # A remote image tells the sender when, and from which address, the mail was read:
                # a read receipt the reader never agreed to. Drop the src, keep the element.
                blocked += 1
                return None
            return None  # mailto: as an image source means nothing
        return value

    cleaner = nh3.Cleaner(
        tags=ALLOWED_TAGS,
        clean_content_tags=REMOVED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=filter_attribute,
        strip_comments=True,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=ALLOWED_URL_SCHEMES,
        url_relative="deny",
    )
    # Lone surrogates (from a lenient decoder upstream) cannot cross into Rust's UTF-8 strings.
    cleaned = cleaner.clean(_SURROGATES.sub("\ufffd", html[:MAX_HTML_CHARS]))
    return SanitizedHtml(html=cleaned, blocked_remote_images=blocked)


def _url_scheme(url: str) -> str:
    """The lower-cased scheme of `url`, or "" if it has none."""
    match = _URL_SCHEME.match(url)
    if match is None:
        return ""
    return re.sub(r"[\t\n\r]", "", match.group(1)).lower()


def _filter_style(style: str) -> str | None:
    """Keep only allowlisted declarations with plain values; None if nothing is left."""
    if len(style) > MAX_STYLE_CHARS:
        return None
    kept: list[str] = []
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        name = name.strip().lower()
        value = value.strip()
        if not colon or not value:
            continue
        if _CSS_PROPERTY.match(name) is None or name not in ALLOWED_CSS_PROPERTIES:
            continue
        if _CSS_VALUE.match(value) is None:
            continue
        kept.append(f"{name}: {value}")
    return "; ".join(kept) if kept else None
