"""What every page must pass in the browser: an accessibility smoke check and WCAG contrast.

No external tool (axe and friends would have to be downloaded): the browser reports what it
rendered, and the rules are a short list we can read. The contrast maths is WCAG 2.x's
relative luminance, done here in Python on the colours Chromium computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_CONTRAST = 4.5  # WCAG AA for normal-size text; we hold large text to it as well

# Problems a person using a screen reader or a keyboard would hit, as short sentences.
A11Y_JS = """
() => {
  const problems = [];
  const text = (el) => (el.innerText || el.textContent || "").trim();
  if (!(document.documentElement.getAttribute("lang") || "").trim()) {
    problems.push("<html> has no lang attribute");
  }
  if (!document.title.trim()) problems.push("the page has no <title>");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    const type = (el.getAttribute("type") || "").toLowerCase();
    if (type === "hidden") continue;
    if (["submit", "button", "reset"].includes(type)) {
      if (!(el.value || el.getAttribute("aria-label"))) problems.push(`${type} input has no name`);
      continue;
    }
    const labelled = (el.labels && [...el.labels].some((l) => text(l)))
      || (el.getAttribute("aria-label") || "").trim() || el.getAttribute("aria-labelledby");
    if (!labelled) problems.push(`field ${el.name || el.id || el.outerHTML} has no label`);
  }
  for (const el of document.querySelectorAll("button, a[href], [role=button]")) {
    const name = text(el) || (el.getAttribute("aria-label") || "").trim()
      || [...el.querySelectorAll("img[alt]")].map((i) => i.alt.trim()).join("");
    if (!name) problems.push(`${el.tagName.toLowerCase()} ${el.outerHTML} has no accessible name`);
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) problems.push(`image ${img.src} has no alt text`);
  }
  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")];
  const h1s = headings.filter((h) => h.tagName === "H1").length;
  if (h1s !== 1) problems.push(`${h1s} <h1> elements (want exactly one)`);
  let previous = 0;
  for (const h of headings) {
    const level = Number(h.tagName[1]);
    if (previous === 0 && level !== 1) problems.push(`the first heading is ${h.tagName}`);
    if (previous && level > previous + 1) {
      problems.push(`${h.tagName} "${text(h)}" skips a level after H${previous}`);
    }
    previous = level;
  }
  const ids = [...document.querySelectorAll("[id]")].map((e) => e.id);
  const dupes = ids.filter((id, i) => ids.indexOf(id) !== i);
  if (dupes.length) problems.push(`duplicate ids: ${[...new Set(dupes)].join(", ")}`);
  return problems;
}
"""

# Every visible piece of text (and every text field and button), with its colour and the
# stack of background colours behind it, innermost first.
TEXT_COLOURS_JS = """
() => {
  const parse = (value) => {
    const m = /rgba?\\(([^)]*)\\)/.exec(value || "");
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const backgrounds = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const colour = parse(getComputedStyle(e).backgroundColor);
      if (colour && colour[3] > 0) {
        layers.push(colour);
        if (colour[3] >= 1) break;
      }
    }
    return layers;
  };
  const found = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (["SCRIPT", "STYLE", "NOSCRIPT", "OPTION", "PROGRESS"].includes(el.tagName)) continue;
    const type = (el.getAttribute("type") || "").toLowerCase();
    const control = el.tagName === "BUTTON"
      || (el.tagName === "INPUT" && !["hidden", "checkbox", "radio"].includes(type));
    const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!control && !ownText) continue;
    const style = getComputedStyle(el);
    if (!el.getClientRects().length || style.visibility === "hidden") continue;
    found.push({
      what: `${el.tagName.toLowerCase()}${el.className ? "." + el.className : ""} `
        + `"${(el.innerText || el.value || el.getAttribute("type") || "").trim().slice(0, 40)}"`,
      fg: parse(style.color),
      bg: backgrounds(el),
    });
  }
  return found;
}
"""

# True when nothing is wider than the window (no sideways scrolling on a phone).
FITS_WIDTH_JS = "() => document.documentElement.scrollWidth <= window.innerWidth"

# The focus ring of whatever has focus now, after the keyboard moved it.
FOCUS_JS = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  return {
    what: `${el.tagName.toLowerCase()} "${(el.innerText || el.value || el.name || "").trim()
      .slice(0, 40)}"`,
    outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    shadow: style.boxShadow !== "none",
  };
}
"""

RGBA = list[float]


def _channel(value: float) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(rgb: RGBA) -> float:
    """WCAG relative luminance of an opaque sRGB colour."""
    r, g, b = (_channel(v) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: RGBA, b: RGBA) -> float:
    """WCAG contrast ratio, 1 to 21."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def over(top: RGBA, below: RGBA) -> RGBA:
    """``top`` painted over an opaque ``below`` (alpha compositing)."""
    alpha = top[3]
    return [top[i] * alpha + below[i] * (1 - alpha) for i in range(3)] + [1.0]


def flatten(layers: list[RGBA]) -> RGBA:
    """The opaque colour behind an element: its backgrounds over the white canvas."""
    colour: RGBA = [255.0, 255.0, 255.0, 1.0]
    for layer in reversed(layers):
        colour = over(layer, colour)
    return colour


@dataclass(frozen=True)
class LowContrast:
    what: str
    ratio: float

    def __str__(self) -> str:
        return f"{self.what}: contrast {self.ratio:.2f}:1 (want {MIN_CONTRAST}:1)"


def low_contrast(items: list[dict[str, Any]]) -> list[LowContrast]:
    """The text whose colour on its background falls short of WCAG AA."""
    found = []
    for item in items:
        if item["fg"] is None:
            continue
        background = flatten(item["bg"])
        ratio = contrast(over(item["fg"], background), background)
        if ratio < MIN_CONTRAST:
            found.append(LowContrast(item["what"], ratio))
    return found


# The labelled cells of tables shown as cards at phone width (td[data-label]), in document
# order: each cell's label, whether the label's text overflows its box (measured on a
# hidden copy styled as the ::before is: the page cannot measure the pseudo-element's own
# text), and the boxes of its contents (text lines and inline elements).
CELL_VALUES_JS = """
() => [...document.querySelectorAll("td[data-label]")].map((td) => {
  const range = document.createRange();
  range.selectNodeContents(td);
  const style = getComputedStyle(td, "::before");
  let overflows = false;
  if (style.content !== "none" && td.getClientRects().length) {
    const probe = document.createElement("div");
    for (const prop of ["font", "letter-spacing", "white-space", "overflow-wrap", "word-break",
                        "box-sizing", "width", "padding-left", "padding-right"]) {
      probe.style.setProperty(prop, style.getPropertyValue(prop));
    }
    Object.assign(probe.style, {position: "absolute", visibility: "hidden", left: "0", top: "0"});
    probe.textContent = td.dataset.label;
    document.body.append(probe);
    overflows = probe.scrollWidth > probe.clientWidth;
    probe.remove();
  }
  return {
    label: td.dataset.label,
    overflows,
    value: (td.innerText || "").trim().slice(0, 40),
    rects: [...range.getClientRects()].filter((r) => r.width > 0 && r.height > 0)
      .map((r) => [r.left, r.top, r.right, r.bottom]),
  };
})
"""
MIN_LABEL_GAP = 4  # CSS pixels between the end of a cell's label and its value


def _labelled_cell_befores(node: dict[str, Any], found: list[int | None]) -> None:
    """The ::before node id of every td[data-label] under ``node``, in document order."""
    if node.get("localName") == "td" and "data-label" in node.get("attributes", [])[::2]:
        before = [p["nodeId"] for p in node.get("pseudoElements", [])
                  if p.get("pseudoType") == "before"]
        found.append(before[0] if before else None)
    for child in node.get("children", []):
        _labelled_cell_befores(child, found)


def labels_running_into_values(page: Any) -> list[str]:
    """Labelled table cells whose value does not keep clear of its label, as sentences.

    The label is the cell's ::before, which a page's script cannot measure, so its box is
    read through Chromium's DevTools protocol; the value's boxes come from a Range over the
    cell's contents. The label's text must fit its box, and every box of the value must
    start right of that box, so a long label never runs into the value and a value's
    second line never slips under the label.
    """
    cells = page.evaluate(CELL_VALUES_JS)
    if not cells:
        return []
    cdp = page.context.new_cdp_session(page)
    try:
        befores: list[int | None] = []
        _labelled_cell_befores(cdp.send("DOM.getDocument", {"depth": -1})["root"], befores)
        assert len(befores) == len(cells), "the DOM and the page disagree on the cells"
        problems = []
        for cell, before in zip(cells, befores, strict=True):
            if before is None or not cell["rects"]:
                continue  # no label shown, or nothing in the cell
            if cell["overflows"]:
                problems.append(f'"{cell["label"]}" is wider than its label column')
            quad = cdp.send("DOM.getBoxModel", {"nodeId": before})["model"]["content"]
            label_right = max(quad[0::2])
            left = min(rect[0] for rect in cell["rects"])
            if left < label_right + MIN_LABEL_GAP:
                problems.append(f'"{cell["label"]}" runs into "{cell["value"]}" '
                                f"(value at {left:.0f} px, label ends at {label_right:.0f} px)")
        return problems
    finally:
        cdp.detach()
