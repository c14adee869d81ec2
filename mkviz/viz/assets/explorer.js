/* mkviz kernel-free explorers (mkviz.viz.explorer_html). Reads the JSON that mkviz embeds next to the explorer's
   div (rows, statistics, similarity matrices, atlas points, figure templates of mkviz.figures) and redraws
   the figures with plotly.js when a control moves or a map / atlas point is clicked. Requests nothing. */
(function () {
  "use strict";
  if (window.mkvizExplorer) return;

  let HALF = null;  // float16 bit pattern -> value, built on first use
  function halfTable() {
    if (HALF) return HALF;
    HALF = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      HALF[h] = e === 0 ? s * f * Math.pow(2, -24) : e === 31 ? (f ? NaN : s * Infinity)
        : s * (1 + f / 1024) * Math.pow(2, e - 15);
    }
    return HALF;
  }

  /** {shape, dtype, data (base64, little endian)} -> Float32Array */
  function decode(entry) {
    const bin = atob(entry.data), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    if ((entry.dtype || "float32") === "float32") return new Float32Array(bytes.buffer);
    const bits = new Uint16Array(bytes.buffer), table = halfTable(), out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
    return out;
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => { if (k === "text") e.textContent = v; else e.setAttribute(k, v); });
    (children || []).forEach(c => e.appendChild(c));
    return e;
  }

  function select(cls, options, value) {
    const s = el("select", {class: cls});
    options.forEach(([v, label]) => s.appendChild(el("option", {value: String(v), text: label})));
    s.value = String(value);
    return s;
  }

  function copy(x) { return JSON.parse(JSON.stringify(x)); }

  const CONFIG = {displaylogo: false, responsive: true};

  class Explorer {
    constructor(root, data) {
      this.root = root;
      this.data = data;
      this.cache = {};
      this.rev = 0;
      const init = data.initial;
      this.state = {model: data.initial_model || 0, image: 0, layer: init.layer, head: 0, row: init.query[0],
                    col: init.query[1], similarity: data.similarity[0] || null, shared: true};
      const perHead = data.heads === "all" ? [...Array(data.num_heads).keys()].map(h => "head " + h) : [];
      this.headLabels = ["mean"].concat(perHead);
      this.buildControls();
      this.buildFigures();
      this.refresh(true);
    }

    // ------------------------------------------------------------------ controls
    buildControls() {
      const d = this.data, s = this.state, c = el("div", {class: "mkviz-controls"});
      const add = (label, input, out) =>
        c.appendChild(el("label", {}, [el("span", {text: label}), input].concat(out ? [out] : [])));
      if (d.kind === "count") {
        this.chartsInput = el("input", {type: "range", class: "mkviz-charts", min: 0, max: d.counts.length - 1, step: 1});
        this.chartsInput.value = String(s.model);
        this.chartsOut = el("output", {text: "H = " + d.counts[s.model]});
        add("charts", this.chartsInput, this.chartsOut);
        this.chartsInput.addEventListener("input", () => this.set({model: +this.chartsInput.value}, true));
      }
      this.imageInput = select("mkviz-image", d.images.map((_, i) => [i, this.imageLabel(i)]), s.image);
      add("image", this.imageInput);
      this.layerInput = select("mkviz-layer", d.layers.map((l, i) => [i, l]), s.layer);
      add("layer", this.layerInput);
      this.headInput = select("mkviz-head", this.headLabels.map((l, i) => [i, l]), s.head);
      add("head", this.headInput);
      this.rowInput = el("input", {type: "range", class: "mkviz-row", min: 0, max: d.grid[0] - 1, step: 1});
      this.colInput = el("input", {type: "range", class: "mkviz-col", min: 0, max: d.grid[1] - 1, step: 1});
      this.rowOut = el("output"); this.colOut = el("output");
      add("query row", this.rowInput, this.rowOut);
      add("query col", this.colInput, this.colOut);
      if (d.similarity.length) {
        this.simInput = select("mkviz-similarity", d.similarity.map(k => [k, k]), s.similarity);
        add("similarity", this.simInput);
        this.simInput.addEventListener("change", () => this.set({similarity: this.simInput.value}));
      }
      this.sharedInput = el("input", {type: "checkbox", class: "mkviz-shared"});
      this.sharedInput.checked = true;
      add("shared colour scale", this.sharedInput);
      this.imageInput.addEventListener("change", () => this.set({image: +this.imageInput.value}, true));
      this.layerInput.addEventListener("change", () => this.set({layer: +this.layerInput.value}));
      this.headInput.addEventListener("change", () => this.set({head: +this.headInput.value}));
      this.rowInput.addEventListener("input", () => this.set({row: +this.rowInput.value}));
      this.colInput.addEventListener("input", () => this.set({col: +this.colInput.value}));
      this.sharedInput.addEventListener("change", () => this.set({shared: this.sharedInput.checked}));
      this.info = el("div", {class: "mkviz-info"});
      this.root.appendChild(c);
      this.root.appendChild(this.info);
    }

    imageLabel(i) {
      const d = this.data, y = d.labels ? d.labels[i] : null;
      return y === null || y === undefined ? "image " + i : "image " + i + " (" + this.className(y) + ")";
    }

    className(k) {
      const names = this.data.class_names;
      const name = names && k >= 0 && k < names.length ? names[k] : String(k);
      return name.replace(/[<>&"]/g, ch => ({"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;"})[ch]);
    }

    buildFigures() {
      const d = this.data, m = d.models[0];
      this.mapsDiv = el("div", {class: "mkviz-plot mkviz-plot-maps"});
      this.root.appendChild(this.mapsDiv);
      const bottom = el("div", {class: "mkviz-bottom"});
      this.root.appendChild(bottom);
      const add = (name, when) => {
        if (!when) return null;
        const div = el("div", {class: "mkviz-plot mkviz-plot-" + name});
        bottom.appendChild(div);
        return div;
      };
      this.simDiv = add("similarity", d.similarity.length);
      this.entropyDiv = add("entropy", d.maps === "charts");
      this.evidenceDiv = add("evidence", d.maps === "charts" && m.stats.evidence);
      this.sceneDiv = add("scene", d.maps === "charts" && m.stats.scene);
      this.accuracyDiv = add("accuracy", d.accuracy_figure);
      this.atlasDiv = null;
      if (m.atlas) {
        this.atlasDiv = el("div", {class: "mkviz-plot mkviz-plot-atlas"});
        (d.kind === "atlas" ? bottom : this.root).appendChild(this.atlasDiv);
      }
    }

    // ------------------------------------------------------------------ state
    set(change, templates) {
      Object.assign(this.state, change);
      this.refresh(templates);
    }

    /** Select grid cell (r, c) as the query (a click on a map or an atlas point). */
    select(r, c) { this.set({row: r, col: c}); }

    model() { return this.data.models[this.state.model]; }
    layerName() { return this.data.layers[this.state.layer]; }
    charts() { return this.data.maps === "charts" ? this.model().charts : 0; }
    queryIndex() { return this.state.row * this.data.grid[1] + this.state.col; }

    array(name) {
      const key = [this.state.model, this.layerName(), name].join("|");
      if (!(key in this.cache)) {
        const entry = this.model().layers[this.layerName()][name];
        this.cache[key] = entry ? {shape: entry.shape, values: decode(entry)} : null;
      }
      return this.cache[key];
    }

    similarityArray(kind) {
      const key = [this.state.model, this.layerName(), "similarity", kind].join("|");
      if (!(key in this.cache)) {
        const entry = this.model().layers[this.layerName()].similarity[kind];
        this.cache[key] = {shape: entry.shape, values: decode(entry)};
      }
      return this.cache[key];
    }

    /** The maps of the current query: M arrays of G values (fused first), the head mean averaged here. */
    currentMaps() {
      const rows = this.array("rows"), [, kR, G, M] = rows.shape, v = rows.values, s = this.state;
      const q = this.queryIndex(), out = [];
      const at = (h, m, k) => v[((((s.image * kR + h) * G + q) * M + m) * G) + k];
      for (let m = 0; m < M; m++) {
        const map = new Array(G);
        for (let k = 0; k < G; k++) {
          if (this.data.heads === "all" && s.head === 0) {
            let sum = 0;
            for (let h = 0; h < kR; h++) sum += at(h, m, k);
            map[k] = sum / kR;
          } else {
            map[k] = at(this.data.heads === "all" ? s.head - 1 : 0, m, k);
          }
        }
        out.push(map);
      }
      return out;
    }

    /** One (k, G, M) statistic of the current image, head and query: M values. */
    currentStat(name) {
      const a = this.array(name);
      if (!a) return null;
      const [, k, G, M] = a.shape, s = this.state, base = ((s.image * k + s.head) * G + this.queryIndex()) * M;
      return Array.from(a.values.subarray(base, base + M));
    }

    // ------------------------------------------------------------------ drawing
    draw(div, spec) {
      spec.layout.datarevision = ++this.rev;
      if (div.data) return Plotly.react(div, spec.data, spec.layout, CONFIG);
      const p = Plotly.newPlot(div, spec.data, spec.layout, CONFIG);
      return p;
    }

    refresh(templates) {
      const s = this.state, d = this.data;
      if (templates || !this.maps) this.loadTemplates();
      this.rowInput.value = String(s.row); this.colInput.value = String(s.col);
      this.rowOut.textContent = String(s.row); this.colOut.textContent = String(s.col);
      this.layerInput.value = String(s.layer); this.headInput.value = String(s.head);
      this.imageInput.value = String(s.image);
      if (this.chartsInput) {
        this.chartsInput.value = String(s.model);
        this.chartsOut.textContent = "H = " + d.counts[s.model];
      }
      this.updateMaps();
      if (this.simDiv) this.updateSimilarity();
      if (this.entropyDiv) this.updateStats();
      if (this.sceneDiv) this.updateScene();
      if (this.accuracyDiv) this.updateAccuracy();
      if (this.atlasDiv) this.updateAtlas();
      this.info.innerHTML = this.infoHtml();
    }

    loadTemplates() {
      const m = this.model(), first = !this.maps;
      this.maps = copy(m.maps);
      (this.maps.layout.images || []).forEach(im => { im.source = this.data.images[this.state.image]; });
      this.stats = copy(m.stats);
      if (m.atlas) this.atlas = copy(m.atlas);
      if (this.data.accuracy_figure && !this.accuracy) this.accuracy = copy(this.data.accuracy_figure);
      if (first) {
        this.draw(this.mapsDiv, this.maps);
        this.mapsDiv.on("plotly_click", ev => this.onMapClick(ev));
        if (this.atlasDiv) {
          this.draw(this.atlasDiv, this.atlas);
          this.atlasDiv.on("plotly_click", ev => this.onAtlasClick(ev));
        }
      }
    }

    updateMaps() {
      const maps = this.currentMaps(), [gh, gw] = this.data.grid, [H, W] = this.data.image_size;
      const ch = H / gh, cw = W / gw, s = this.state;
      const lo = Math.min(...maps.map(m => Math.min(...m))), hi = Math.max(...maps.map(m => Math.max(...m)));
      const x0 = s.col * cw - 0.5, x1 = (s.col + 1) * cw - 0.5, y0 = s.row * ch - 0.5, y1 = (s.row + 1) * ch - 0.5;
      const heat = this.maps.data.filter(t => t.type === "heatmap");
      const boxes = this.maps.data.filter(t => t.type !== "heatmap");
      maps.forEach((m, p) => {
        const z = [];
        for (let r = 0; r < gh; r++) z.push(m.slice(r * gw, (r + 1) * gw));
        Object.assign(heat[p], {z: z, zmin: s.shared ? lo : Math.min(...m), zmax: s.shared ? hi : Math.max(...m)});
      });
      boxes.forEach(b => { b.x = [x0, x1, x1, x0, x0]; b.y = [y0, y0, y1, y1, y0]; });
      (this.maps.layout.images || []).forEach(im => { im.source = this.data.images[s.image]; });
      this.draw(this.mapsDiv, this.maps);
    }

    updateSimilarity() {
      const kind = this.state.similarity, style = this.data.similarity_styles[kind], a = this.similarityArray(kind);
      const [, k, H] = a.shape, base = (this.state.image * k + this.state.head) * H * H, z = [];
      for (let i = 0; i < H; i++) z.push(Array.from(a.values.subarray(base + i * H, base + (i + 1) * H)));
      const labels = [...Array(H).keys()].map(i => "c" + (i + 1)), trace = copy(style.trace), layout = copy(style.layout);
      Object.assign(trace, {z: z, x: labels, y: labels});
      const count = this.data.kind === "count" ? "H = " + this.model().charts + ", " : "";
      const context = count + this.layerName() + ", " + this.headLabels[this.state.head];
      layout.title.text = layout.title.text + "<br><sup>" + context + "</sup>";
      layout.margin = Object.assign({}, layout.margin, {t: 70});
      this.draw(this.simDiv, {data: [trace], layout: layout});
    }

    updateStats() {
      const ent = this.currentStat("entropy"), n = this.data.prefix + this.data.grid[0] * this.data.grid[1];
      const e = this.stats.entropy;
      e.data[0].y = ent;
      e.data[1].y = [Math.log(n), Math.log(n)];
      this.draw(this.entropyDiv, e);
      if (!this.evidenceDiv) return;
      const ev = this.stats.evidence, chance = this.data.chance[this.state.image];
      ev.data[0].y = this.currentStat("evidence");
      ev.data[1].y = [chance, chance];
      (ev.layout.shapes || []).forEach(sh => { sh.y0 = chance; sh.y1 = chance; });
      this.draw(this.evidenceDiv, ev);
    }

    /** The current query's shares (M maps × same / other / background; null: no same object) and chance (3). */
    currentScene() {
      const a = this.array("scene"), [, k, G, M] = a.shape, s = this.state, q = this.queryIndex();
      if (!this.sceneChance) this.sceneChance = decode(this.data.scene_chance);
      const val = x => (Number.isNaN(x) ? null : x), base = ((s.image * k + s.head) * G + q) * M * 3;
      const shares = [];
      for (let m = 0; m < M; m++) shares.push([0, 1, 2].map(r => val(a.values[base + m * 3 + r])));
      const cb = (s.image * G + q) * 3;
      return {shares: shares, chance: [0, 1, 2].map(r => val(this.sceneChance[cb + r]))};
    }

    updateScene() {
      const spec = this.stats.scene, {shares, chance} = this.currentScene(), meta = spec.layout.meta;
      shares.forEach((y, m) => { spec.data[m].y = y; });
      const line = spec.data.find(t => t.name === "chance");  // dashed segments as mkviz.viz.scene_view.chance_path
      line.y = [];
      chance.forEach((c, r) => { line.y.push(c, c); if (r < 2) line.y.push(null); });
      spec.layout.title = {text: meta.title + (chance[0] === null ? "<br><sup>" + meta.note + "</sup>" : "")};
      this.draw(this.sceneDiv, spec);
    }

    updateAccuracy() {
      const h = this.data.counts[this.state.model], acc = this.data.accuracies[h];
      const cur = this.accuracy.data.find(t => t.name === "current");
      if (cur) { cur.x = acc === undefined ? [] : [h]; cur.y = acc === undefined ? [] : [acc]; }
      this.draw(this.accuracyDiv, this.accuracy);
    }

    updateAtlas() {
      const a = this.array("atlas"), [, k, P] = a.shape, s = this.state, base = (s.image * k + s.head) * P * 2;
      const traces = this.atlas.data, n = P / (traces.length - 1);
      for (let t = 0; t < traces.length - 1; t++) {
        const xs = [], ys = [];
        for (let j = 0; j < n; j++) {
          xs.push(a.values[base + (t * n + j) * 2]);
          ys.push(a.values[base + (t * n + j) * 2 + 1]);
        }
        traces[t].x = xs; traces[t].y = ys;
      }
      const token = this.data.prefix + this.queryIndex(), ring = traces[traces.length - 1];
      ring.x = [traces[0].x[token]]; ring.y = [traces[0].y[token]]; ring.customdata = [token];
      this.atlas.layout.title = {text: "key atlas: queries and chart keys, " + this.layerName() + ", " +
                                 this.headLabels[s.head] + " (PCA)"};
      this.draw(this.atlasDiv, this.atlas);
    }

    infoHtml() {
      const d = this.data, s = this.state, pred = this.model().predicted[s.image], parts = [];
      if (d.kind === "count") parts.push("<b>H = " + d.counts[s.model] + " charts</b>");
      parts.push((d.kind === "count" ? "" : "<b>") + "image " + s.image + (d.kind === "count" ? "" : "</b>"));
      if (d.labels) parts.push("label: " + this.className(d.labels[s.image]));
      parts.push("predicted: " + this.className(pred[0]) + " (p = " + pred[1].toFixed(2) + ")");
      if (d.accuracies && d.accuracies[d.counts[s.model]] !== undefined)
        parts.push("accuracy " + d.accuracies[d.counts[s.model]].toFixed(3));
      parts.push("layer " + this.layerName() + ", " + this.headLabels[s.head] + ", query (row " + s.row + ", col " +
                 s.col + ") on a " + d.grid[0] + "×" + d.grid[1] + " grid");
      return parts.join(" · ");
    }

    // ------------------------------------------------------------------ clicks
    onMapClick(ev) {
      const pt = ev && ev.points && ev.points[0];
      if (!pt || pt.data.type !== "heatmap") return;
      const [gh, gw] = this.data.grid, [H, W] = this.data.image_size;
      const r = Math.min(Math.max(Math.floor((pt.y + 0.5) / (H / gh)), 0), gh - 1);
      const c = Math.min(Math.max(Math.floor((pt.x + 0.5) / (W / gw)), 0), gw - 1);
      this.select(r, c);
    }

    onAtlasClick(ev) {
      const pt = ev && ev.points && ev.points[0];
      if (!pt || pt.customdata === undefined) return;
      const t = +pt.customdata - this.data.prefix;
      if (t < 0) return;
      this.select(Math.floor(t / this.data.grid[1]), t % this.data.grid[1]);
    }
  }

  window.mkvizExplorer = {
    instances: {},
    /** Mount the explorer of div `id` from the JSON in script `id`-data. */
    mount(id) {
      const root = document.getElementById(id), data = JSON.parse(document.getElementById(id + "-data").textContent);
      if (typeof Plotly === "undefined") {
        root.textContent = "mkviz explorer: plotly.js did not load (the shared copy is missing?)";
        return null;
      }
      return (this.instances[id] = new Explorer(root, data));
    },
    decode: decode,
  };
})();
