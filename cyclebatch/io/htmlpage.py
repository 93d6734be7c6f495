"""One self-contained HTML page built from data: the run report and the training report share it.

The page carries its own CSS and JavaScript and needs no server or network, so it opens from the file
system and can be mailed around. Small sections (tables, one image) are written as HTML; large ones (a
gallery of sample grids, a list of 100,000 translated files) travel as JSON inside the page and are drawn
by a few lines of script one page at a time, so the browser only ever holds one page of rows in the DOM.

Rendered elements carry stable data- attributes (data-kind, data-heading, data-row, data-page, data-pages,
data-shown, data-label) so that tests read the rendered page rather than the HTML text.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .files import atomic_path


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_thumbnail(rgb: np.ndarray, longest: int = 160, quality: int = 80) -> bytes:
    """A small JPEG of an RGB (or grey) uint8 image, its longest side at most `longest`."""
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    im.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _json_for_script(obj) -> str:
    # "</" would end the <script> element early; "<\/" means the same thing to JSON.parse.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


class Page:
    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self._parts: list[str] = []
        self._data: list[str] = []

    def _section(self, kind: str, heading: str, body: str) -> None:
        h = html.escape(heading, quote=True)
        self._parts.append(f'<section data-kind="{kind}" data-heading="{h}"><h2>{html.escape(heading)}</h2>{body}</section>')

    def _payload(self, obj) -> int:
        self._data.append(_json_for_script(obj))
        return len(self._data) - 1

    def text(self, heading: str, paragraphs: Sequence[str]) -> None:
        self._section("text", heading, "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs))

    def table(self, heading: str, rows: Sequence[tuple[str, object]]) -> None:
        body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        self._section("table", heading, f'<table class="kv">{body}</table>')

    def image(self, heading: str, src: str, alt: str = "") -> None:
        self._section("image", heading, f'<img class="figure" src="{html.escape(src, quote=True)}" '
                                        f'alt="{html.escape(alt, quote=True)}">')

    def gallery(self, heading: str, frames: Sequence[dict]) -> None:
        """Images shown one at a time ({"label", "src"} each, the first shown first) with a slider and a list."""
        n = self._payload([{"label": str(f["label"]), "src": str(f["src"])} for f in frames])
        self._section("gallery", heading, f'<div class="gallery" data-payload="{n}"></div>')

    def entries(self, heading: str, columns: Sequence[str], rows: Sequence[Sequence], *,
                image_columns: Sequence[str] = (), page_size: int = 100) -> None:
        """A paged, filterable table. Cells of `image_columns` are image sources (data URI or relative URL)."""
        cols = [str(c) for c in columns]
        unknown = set(image_columns) - set(cols)
        if unknown:
            raise ValueError(f"image columns not among the columns: {sorted(unknown)}")
        rows = [["" if v is None else v for v in row] for row in rows]
        n = self._payload({"columns": cols, "images": [cols.index(c) for c in image_columns],
                           "rows": rows, "pageSize": int(page_size)})
        self._section("entries", heading, f'<div class="entries" data-payload="{n}"></div>')

    def html(self) -> str:
        data = "".join(f'<script type="application/json" id="payload-{i}">{d}</script>' for i, d in enumerate(self._data))
        sub = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
                f"<body><h1>{html.escape(self.title)}</h1>{sub}{''.join(self._parts)}{data}"
                f"<script>{_JS}</script></body></html>")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.html(), encoding="utf-8")
        return path


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .5em}.subtitle{color:#666;margin:0}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.kv th{color:#555;font-weight:600}img.figure{max-width:100%}
.entries table{width:100%}.entries thead th{position:sticky;top:0;background:#fafafa}
.entries td img{max-height:160px;max-width:240px;display:block}tr[data-status=failed]{background:#fff1f0}
.bar{display:flex;gap:.6em;align-items:center;margin:.4em 0}.bar input[type=search]{width:20em}
.gallery img[data-shown]{max-width:100%;min-width:min(100%,480px);image-rendering:pixelated;display:block;margin-top:.5em}
.gallery ol{columns:4;font-size:.9em}.gallery li{cursor:pointer}.gallery li.on{font-weight:700}
"""

# Plain DOM code, no framework: the page must open offline in any browser for years.
_JS = r"""
(function(){
function el(tag,attrs,text){var e=document.createElement(tag);for(var k in (attrs||{}))e.setAttribute(k,attrs[k]);
 if(text!==undefined)e.textContent=text;return e;}
function payload(box){return JSON.parse(document.getElementById('payload-'+box.dataset.payload).textContent);}
document.querySelectorAll('.gallery').forEach(function(box){
 var frames=payload(box);
 if(!frames.length){box.appendChild(el('p',{},'Nothing yet.'));return;}
 var bar=el('div',{'class':'bar'}),slider=el('input',{type:'range',min:0,max:frames.length-1,value:0,step:1});
 var label=el('span',{'data-label':''}),img=el('img',{'data-shown':'',alt:''}),list=el('ol');
 bar.appendChild(slider);bar.appendChild(label);box.appendChild(bar);box.appendChild(img);box.appendChild(list);
 frames.forEach(function(f,i){var li=el('li',{'data-index':i},f.label);li.onclick=function(){show(i);};list.appendChild(li);});
 function show(i){slider.value=i;img.src=frames[i].src;img.alt=frames[i].label;label.textContent=frames[i].label;
  label.setAttribute('data-label',frames[i].label);
  list.querySelectorAll('li').forEach(function(li,j){li.className=(i===j)?'on':'';});}
 slider.oninput=function(){show(+slider.value);};show(0);
});
document.querySelectorAll('.entries').forEach(function(box){
 var d=payload(box),cols=d.columns,imgs=d.images,size=d.pageSize,all=d.rows,shown=all,page=0;
 var status=cols.indexOf('status'),textCols=cols.map(function(c,i){return i;}).filter(function(i){return imgs.indexOf(i)<0;});
 var bar=el('div',{'class':'bar'}),filter=el('input',{type:'search',placeholder:'filter (any text column)'});
 var prev=el('button',{},'\u2039 prev'),next=el('button',{},'next \u203a'),info=el('span',{'class':'pager'});
 [filter,prev,info,next].forEach(function(x){bar.appendChild(x);});box.appendChild(bar);
 var table=el('table'),head=el('tr'),body=el('tbody');cols.forEach(function(c){head.appendChild(el('th',{},c));});
 var thead=el('thead');thead.appendChild(head);table.appendChild(thead);table.appendChild(body);box.appendChild(table);
 function draw(){var pages=Math.max(1,Math.ceil(shown.length/size));page=Math.min(Math.max(page,0),pages-1);
  body.textContent='';var start=page*size;
  shown.slice(start,start+size).forEach(function(r,k){var tr=el('tr',{'data-row':start+k});
   if(status>=0)tr.setAttribute('data-status',String(r[status]));
   r.forEach(function(v,i){var td=el('td');
    if(imgs.indexOf(i)>=0){if(v)td.appendChild(el('img',{src:v,loading:'lazy',alt:cols[i]}));else td.textContent='\u2014';}
    else td.textContent=String(v);tr.appendChild(td);});body.appendChild(tr);});
  info.textContent='page '+(page+1)+' of '+pages+' ('+shown.length+' of '+all.length+')';
  info.setAttribute('data-page',page+1);info.setAttribute('data-pages',pages);
  prev.disabled=page===0;next.disabled=page>=pages-1;}
 prev.onclick=function(){page--;draw();};next.onclick=function(){page++;draw();};
 function apply(){var q=filter.value.toLowerCase();shown=!q?all:all.filter(function(r){
   return textCols.some(function(i){return String(r[i]).toLowerCase().indexOf(q)>=0;});});}
 var timer=null;filter.oninput=function(){clearTimeout(timer);timer=setTimeout(function(){apply();page=0;draw();},150);};
 // A link may carry #q=TEXT&p=N: the filter and page to open at.
 var h=new URLSearchParams(location.hash.slice(1));
 if(h.get('q')){filter.value=h.get('q');apply();}
 if(h.get('p'))page=(parseInt(h.get('p'),10)||1)-1;
 draw();
});
})();
"""
