// attnlab report: puts the chosen map of the embedded data into the Bokeh plots.
// The data (script#attnlab-data) holds, per run, float32 arrays (base64) with dims
// (step entry, layer entry, cfg, head entry, sample, query_frame, key_frame); step entry 0 is
// the mean over steps, layer entries start with the mean over all layers and each level's,
// head entry 0 is the mean over heads. Nothing here computes a map: it only indexes.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("attnlab-data").textContent);
  const RUNS = DATA.runs;
  const BY_KEY = new Map(RUNS.map((r) => [r.key, r]));
  const $ = (id) => document.getElementById(id);
  const METRIC_NAMES = {
    diagonalness: "diagonalness",
    band_mass: "band mass (|i − j| ≤ 1)",
    entropy: "row entropy (normalised)",
  };
  const EVAL_COLUMNS = [
    "dynamic_degree", "flow_magnitude_mean", "temporal_flickering", "motion_smoothness",
    "consistency", "clip_vl",
  ];
  const PAGE_MAX = Math.max(...RUNS.map((r) => r.vmax), 1e-12);

  // ---- data ------------------------------------------------------------------------------
  function floats(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  function decoded(run) {
    if (!run._maps) {
      run._maps = floats(run.maps);
      run._profiles = floats(run.profiles);
      run._metrics = floats(run.metrics);
    }
    return run;
  }
  function cellIndex(run, s, l, c, h, k) {
    const [, L, C, H, K] = run.shape;
    return (((s * L + l) * C + c) * H + h) * K + k;
  }
  function nd(values, n) {
    // a BokehJS 2D array (an image glyph takes no nested arrays)
    return window.Bokeh.require("core/util/ndarray").ndarray(values, { shape: [n, n] });
  }
  function matrix(run, cell) {
    const n = run.frames;
    return nd(run._maps.slice(cell * n * n, (cell + 1) * n * n), n);
  }
  function profile(run, cell) {
    const n = run.frames;
    return Array.from(run._profiles.subarray(cell * n, (cell + 1) * n));
  }
  function metrics(run, cell) {
    const m = DATA.metrics.length;
    return Array.from(run._metrics.subarray(cell * m, (cell + 1) * m));
  }
  function layerMax(run, l) {
    // the largest value of layer entry l over every step, half, head and sample
    run._layerMax = run._layerMax || {};
    if (!(l in run._layerMax)) {
      const [S, , C, H, K] = run.shape;
      const nn = run.frames * run.frames;
      let high = 0;
      for (let s = 0; s < S; s++) for (let c = 0; c < C; c++) for (let h = 0; h < H; h++) for (let k = 0; k < K; k++) {
        const start = cellIndex(run, s, l, c, h, k) * nn;
        for (let i = start; i < start + nn; i++) if (run._maps[i] > high) high = run._maps[i];
      }
      run._layerMax[l] = high;
    }
    return run._layerMax[l];
  }
  function condIndex(run) {
    const i = run.halves.indexOf("cond");
    return i < 0 ? 0 : i;
  }

  // ---- small DOM helpers -----------------------------------------------------------------
  function el(tag, props, children) {
    const e = document.createElement(tag);
    Object.entries(props || {}).forEach(([k, v]) => {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    });
    (children || []).forEach((c) => e.append(c));
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(Number(v))) return "–";
    const d = digits === undefined ? 4 : digits;
    return Number(v).toFixed(d);
  }
  function fill(select, options, keep) {
    // options: [{value, label, group?}]; keeps the previous choice when it is still offered
    const before = keep === undefined ? select.value : keep;
    select.replaceChildren();
    let group = null;
    let groupName = null;
    options.forEach((o) => {
      const opt = el("option", { value: String(o.value), text: o.label });
      if (o.group) {
        if (o.group !== groupName) {
          group = el("optgroup", { label: o.group });
          select.append(group);
          groupName = o.group;
        }
        group.append(opt);
      } else {
        select.append(opt);
        groupName = null;
      }
    });
    if (options.some((o) => String(o.value) === String(before))) select.value = String(before);
  }
  function kvTable(table, rows) {
    table.replaceChildren(
      ...rows.map(([k, v]) => el("tr", {}, [el("th", { text: k }), el("td", { text: v })]))
    );
  }
  function stepText(run, pos) {
    // which recorded step of how many, the denoising step and its timestep (made with the data)
    const s = run.steps[pos];
    return s ? s.label : "";
  }
  function framesText(run) {
    // a FreeNoise run: its frames and the windows its maps are of
    return run.windows
      ? `${run.windows.video_frames} frames in windows of ${run.windows.frames}`
      : run.latent
      ? `${run.frames} latent frames (${run.latent.rows.length} video frames)`
      : `${run.frames} frames`;
  }
  function layerOptions(run, only) {
    return run.layers
      .map((e, i) => ({
        value: i,
        key: e.key,
        label: e.kind === "layer" ? e.label : e.label,
        group: e.kind === "layer" ? `level ${e.level}` : "means",
      }))
      .filter((o) => !only || only.has(o.key));
  }
  function setRange(fig, n) {
    if (fig._attnlabN === n) return;
    fig._attnlabN = n;
    fig.x_range.start = -0.5;
    fig.x_range.end = n - 0.5;
    fig.y_range.start = n - 0.5;
    fig.y_range.end = -0.5;
  }
  function image(m) {
    const n = m.shape[0];
    return { image: [m], x: [-0.5], y: [-0.5], dw: [n], dh: [n] };
  }
  function emptyImage() {
    return image(nd(new Float32Array([NaN]), 1));
  }
  function plain(m) {
    return { shape: Array.from(m.shape), values: Array.from(m) };
  }

  // ---- the runs table --------------------------------------------------------------------
  function buildTable() {
    const evalCols = EVAL_COLUMNS.filter((c) => RUNS.some((r) => r.evaluation && c in r.evaluation));
    const many = DATA.sources.length > 1;
    const head = ["", "run", ...(many ? ["store"] : []), "source", "model", "frames", "steps",
      "layers", "edits", ...DATA.metrics.map((m) => METRIC_NAMES[m]), ...evalCols];
    const table = $("runs-table");
    table.replaceChildren(el("thead", {}, [el("tr", {}, head.map((h) => el("th", { text: h })))]));
    const body = el("tbody");
    RUNS.forEach((r) => {
      const a = el("button", { type: "button", text: "A", title: "compare as A", "data-side": "a" });
      const b = el("button", { type: "button", text: "B", title: "compare as B", "data-side": "b" });
      a.addEventListener("click", (ev) => { ev.stopPropagation(); $("cmp-a").value = r.key; setupCompare(); });
      b.addEventListener("click", (ev) => { ev.stopPropagation(); $("cmp-b").value = r.key; setupCompare(); });
      const cells = [
        el("td", {}, [a, b]),
        el("td", { text: r.run_id, title: r.key }),
        ...(many ? [el("td", { text: r.source })] : []),
        el("td", { text: r.kind }),
        el("td", { text: r.model, title: r.model }),
        el("td", { class: "num", text: r.windows ? framesText(r) : String(r.frames) }),
        el("td", { class: "num", text: String(r.total_steps) }),
        el("td", { class: "num", text: String(r.total_layers) }),
        el("td", { text: r.edits, title: r.edits }),
        ...DATA.metrics.map((m) => el("td", { class: "num", text: fmt(r.summary[m], 3) })),
        ...evalCols.map((c) => el("td", { class: "num", text: fmt(r.evaluation[c], 3) })),
      ];
      const row = el("tr", { "data-key": r.key }, cells);
      row.addEventListener("click", () => {
        $("run-select").value = r.key;
        setupRun();
        $("run").scrollIntoView({ behavior: "smooth", block: "start" });
      });
      body.append(row);
    });
    table.append(body);
  }
  function markTable() {
    const a = $("cmp-a").value;
    const b = $("cmp-b").value;
    document.querySelectorAll("#runs-table tbody tr").forEach((tr) => {
      const key = tr.getAttribute("data-key");
      tr.classList.toggle("current", view.run !== null && key === view.run.key);
      tr.querySelector("button[data-side=a]").classList.toggle("on", key === a);
      tr.querySelector("button[data-side=b]").classList.toggle("on", key === b);
    });
  }

  // ---- one run ---------------------------------------------------------------------------
  const view = { run: null, frame: 0, timer: null, img: null };

  function setupRun() {
    const run = decoded(BY_KEY.get($("run-select").value));
    view.run = run;
    const step = $("step");
    step.max = String(Math.max(0, run.steps.length - 1));
    if (Number(step.value) > run.steps.length - 1) step.value = "0";
    step.disabled = run.steps.length === 0;
    if (run.steps.length === 0) $("step-mean").checked = true;
    $("step-mean").disabled = run.steps.length === 0;
    fill($("layer"), layerOptions(run));
    fill($("cfg"), run.halves.map((h, i) => ({ value: i, label: h })), String(condIndex(run)));
    $("cfg-box").style.display = run.halves.length > 1 ? "" : "none";
    fill($("head"), run.heads.map((h, i) => ({ value: i, label: h === "mean" ? "mean over heads" : h })));
    $("head-box").style.display = run.heads.length > 1 ? "" : "none";
    fill($("sample"), Array.from({ length: run.samples }, (_, i) => ({ value: i, label: String(i) })));
    $("sample-box").style.display = run.samples > 1 ? "" : "none";
    const line = [run.kind, run.model, run.prompt ? `“${run.prompt}”` : "",
      run.seed === null || run.seed === undefined || run.seed < 0 ? "unseeded" : `seed ${run.seed}`,
      framesText(run), `edits: ${run.edits}`];
    $("run-line").textContent = line.filter((x) => x).join(" · ");
    setupVideo(run);
    describeRun(run);
    drawRun();
    markTable();
  }

  function runCell() {
    const run = view.run;
    const s = $("step-mean").checked || run.steps.length === 0 ? 0 : Number($("step").value) + 1;
    return cellIndex(run, s, Number($("layer").value), Number($("cfg").value),
      Number($("head").value), Number($("sample").value));
  }

  function scaleHigh(run) {
    const mode = $("scale").value;
    if (mode === "unit") return 1;
    if (mode === "all") return PAGE_MAX;
    const high = mode === "run" ? run.vmax : layerMax(run, Number($("layer").value));
    return high > 0 ? high : 1;
  }

  function drawRun() {
    const B = window.attnlabBokeh;
    const run = view.run;
    const n = run.frames;
    const cell = runCell();
    const map = matrix(run, cell);
    B.run_src.data = image(map);
    setRange(B.run_fig, n);
    B.run_mapper.low = 0;
    B.run_mapper.high = scaleHigh(run);
    const mean = $("step-mean").checked || run.steps.length === 0;
    const stepLabel = mean ? `mean over ${run.total_steps} steps` : stepText(run, Number($("step").value));
    $("step-label").textContent = mean ? "mean over all steps" : stepText(run, Number($("step").value));
    const layer = run.layers[Number($("layer").value)];
    const half = run.halves[Number($("cfg").value)];
    B.run_fig.title.text = `${run.run_id}: ${half}`;
    const ran = map.some((v) => !Number.isNaN(v));
    $("map-caption").textContent =
      `${layer.label} · ${stepLabel} · ${half}` +
      (run.heads.length > 1 ? ` · head ${run.heads[Number($("head").value)]}` : "") +
      ` · colour 0 to ${fmt(B.run_mapper.high, 3)} (${$("scale").selectedOptions[0].text}),` +
      ` uniform 1/${n} = ${fmt(1 / n, 4)}` +
      (ran ? "" : " · this attention did not run in this step (gap, shown grey)");
    const xs = Array.from({ length: n }, (_, i) => i);
    B.prof_src.data = { x: xs, y: profile(run, cell) };
    B.prof_ref.data = {
      x: xs,
      y: profile(run, cellIndex(run, 0, 0, condIndex(run), 0, 0)),
    };
    B.uniform.location = 1 / n;
    const m = metrics(run, cell);
    const uniformBand = (3 * n - 2) / (n * n);
    kvTable($("map-metrics"), [
      ["this map", ""],
      [METRIC_NAMES.diagonalness, `${fmt(m[0])}   (uniform 0)`],
      [METRIC_NAMES.band_mass, `${fmt(m[1])}   (uniform ${fmt(uniformBand)})`],
      [METRIC_NAMES.entropy, `${fmt(m[2])}   (uniform 1)`],
    ]);
    markRow();
  }

  function describeRun(run) {
    const rows = DATA.metrics.map((m) => [METRIC_NAMES[m], fmt(run.summary[m])]);
    Object.entries(run.evaluation || {}).forEach(([k, v]) => rows.push([k, fmt(v)]));
    kvTable($("run-metrics"), [["map averaged over steps and layers (cond)", ""], ...rows]);
    const notes = run.notes.map((t) => `not in this page: ${t}`);
    $("run-notes").replaceChildren(...notes.map((t) => el("li", { text: t })));
    const prov = Object.entries(run.provenance || {}).map(([k, v]) => [
      k, typeof v === "string" ? v : JSON.stringify(v),
    ]);
    kvTable($("provenance"), [["store", run.source], ["run", run.run_id], ...prov]);
  }

  // ---- the video -------------------------------------------------------------------------
  function setupVideo(run) {
    stop();
    const canvas = $("video");
    const frames = run.video ? run.video.frames : run.windows ? run.windows.video_frames : run.frames;
    const slider = $("frame");
    slider.max = String(Math.max(0, frames - 1));
    view.frame = Math.min(view.frame, frames - 1);
    slider.value = String(view.frame);
    if (run.video) {
      const v = run.video;
      const zoom = Math.max(1, Math.floor(240 / Math.max(v.width, v.height)));
      canvas.width = v.width * zoom;
      canvas.height = v.height * zoom;
      canvas.style.display = "";
      $("no-video").textContent = "";
      $("video-origin").textContent = `from ${v.origin}, ${v.frames} frames at ${v.fps} fps`;
      const img = new Image();
      img.onload = () => drawFrame();
      img.src = v.src;
      view.img = img;
      $("play").disabled = false;
    } else {
      canvas.style.display = "none";
      view.img = null;
      $("no-video").textContent = `${run.video_note || "No video of this run is stored."} ` +
        "The slider still marks a frame's row in the map.";
      $("video-origin").textContent = "";
      $("play").disabled = true;
    }
    drawFrame();
  }
  function drawFrame() {
    const run = view.run;
    $("frame-label").textContent = `frame ${view.frame + 1} / ${Number($("frame").max) + 1}`;
    if (run.windows) {
      // a FreeNoise run's map is the mean of its windows, rows counted within a window
      const rows = frameRows(run, view.frame);
      $("row-note").textContent = rows.length
        ? `In the map (the mean of the FreeNoise windows, rows counted within a window from 0), ` +
          `this frame is ${rows.map(([s, r]) => `row ${r} of the window from frame ${s}`).join(", ")}.`
        : "This frame is in no window of the map.";
    } else if (run.latent) {
      // the map is over latent frames, fewer than the video's (the VAE compresses time)
      const L = run.latent;
      const k = L.rows[view.frame];
      $("row-note").textContent = L.exact
        ? `The map is over ${L.frames} latent frames (the VAE compresses ${L.factor} video frames ` +
          `into one, the first frame alone): this frame is in latent frame ${k}.`
        : `The map is over ${L.frames} latent frames of the video's ${L.rows.length}: this frame ` +
          `is about latent frame ${k} (in proportion).`;
    } else {
      $("row-note").textContent = "";
    }
    if (view.img && view.img.complete && run.video) {
      const v = run.video;
      const canvas = $("video");
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(view.img, view.frame * v.width, 0, v.width, v.height, 0, 0, canvas.width, canvas.height);
    }
    markRow();
  }
  function frameRows(run, f) {
    // the rows of the map that hold video frame f: [window start, row] for each FreeNoise
    // window holding it (its map is the windows' mean, rows counted within the window), else
    // the frame's own row
    if (run.windows) return run.windows.rows[f] || [];
    if (run.latent) return f < run.latent.rows.length ? [[0, run.latent.rows[f]]] : [];
    return f < run.frames ? [[0, f]] : [];
  }
  function markRow() {
    const B = window.attnlabBokeh;
    const run = view.run;
    const n = run.frames;
    const rows = $("show-row").checked ? frameRows(run, view.frame) : [];
    B.row_src.data = {
      x: rows.map(() => (n - 1) / 2), y: rows.map((r) => r[1]), w: rows.map(() => n),
      alpha: rows.map(() => 1),
    };
  }
  function stop() {
    if (view.timer !== null) clearInterval(view.timer);
    view.timer = null;
    $("play").textContent = "▶";
  }
  function play() {
    if (view.timer !== null) { stop(); return; }
    const fps = view.run.video ? view.run.video.fps : 8;
    $("play").textContent = "❚❚";
    view.timer = setInterval(() => {
      view.frame = (view.frame + 1) % (Number($("frame").max) + 1);
      $("frame").value = String(view.frame);
      drawFrame();
    }, 1000 / fps);
  }

  // ---- comparison ------------------------------------------------------------------------
  // Steps are matched by timestep (the noise level the denoiser saw; by index only where
  // neither run recorded timesteps), layers by name; a mean over steps or layers is compared
  // only with a mean over the same steps or layers. What does not correspond is shown side
  // by side, not subtracted, and the caption says why.
  const cmp = { pairs: [] };
  function common(a, b, key) {
    return new Set(a.filter((x) => b.map(key).includes(key(x))).map(key));
  }
  function sameStep(s, t) {
    if (s.timestep !== null && t.timestep !== null) {
      return Math.abs(s.timestep - t.timestep) <= 1e-3 * Math.max(1, Math.abs(s.timestep));
    }
    return s.timestep === null && t.timestep === null && s.index === t.index;
  }
  function sameSteps(a, b) {
    return a.length === b.length && a.every((s) => b.some((t) => sameStep(s, t)));
  }
  function timesteps(run) {
    return run.recorded.map((s) => (s.timestep === null ? `step ${s.index + 1}` : `${+s.timestep.toPrecision(6)}`)).join(", ");
  }
  function members(run, key) {
    // the recorded layers a layer entry is: itself, or those its mean is over
    const entry = run.layers.find((e) => e.key === key);
    if (!entry) return [];
    if (entry.kind === "all") return run.layer_names;
    if (entry.kind === "level") return run.layer_names.filter((_, i) => run.layer_levels[i] === entry.level);
    return [entry.key];
  }
  function setupCompare() {
    const A = decoded(BY_KEY.get($("cmp-a").value));
    const Bn = decoded(BY_KEY.get($("cmp-b").value));
    const layers = common(A.layers, Bn.layers, (e) => e.key);
    fill($("cmp-layer"), layerOptions(A, layers));
    const halves = A.halves.filter((h) => Bn.halves.includes(h));
    fill($("cmp-cfg"), halves.map((h) => ({ value: h, label: h })), halves.includes("cond") ? "cond" : undefined);
    const heads = A.heads.filter((h) => Bn.heads.includes(h));
    fill($("cmp-head"), heads.map((h) => ({ value: h, label: h === "mean" ? "mean over heads" : h })));
    const samples = Math.min(A.samples, Bn.samples);
    fill($("cmp-sample"), Array.from({ length: samples }, (_, i) => ({ value: i, label: String(i) })));
    $("cmp-sample-box").style.display = Math.max(A.samples, Bn.samples) > 1 ? "" : "none";
    // the steps both runs hold in the page, A's position and B's
    cmp.pairs = [];
    A.steps.forEach((s, i) => {
      const j = Bn.steps.findIndex((t) => sameStep(s, t));
      if (j >= 0) cmp.pairs.push([i, j]);
    });
    const step = $("cmp-step");
    step.max = String(Math.max(0, cmp.pairs.length - 1));
    if (Number(step.value) > cmp.pairs.length - 1) step.value = "0";
    step.disabled = cmp.pairs.length === 0;
    if (cmp.pairs.length === 0) $("cmp-step-mean").checked = true;
    $("cmp-step-mean").disabled = cmp.pairs.length === 0;
    drawCompare();
    markTable();
  }
  function compareCells() {
    const A = BY_KEY.get($("cmp-a").value);
    const Bn = BY_KEY.get($("cmp-b").value);
    const mean = $("cmp-step-mean").checked || cmp.pairs.length === 0;
    const pair = mean ? null : cmp.pairs[Number($("cmp-step").value)];
    const layerA = Number($("cmp-layer").value);
    const layerKey = A.layers[layerA] ? A.layers[layerA].key : null;
    const half = $("cmp-cfg").value;
    const head = $("cmp-head").value;
    const sample = Number($("cmp-sample").value || 0);
    const find = (run, pos) => {
      const l = run.layers.findIndex((e) => e.key === layerKey);
      const c = run.halves.indexOf(half);
      const h = run.heads.indexOf(head);
      if (l < 0 || c < 0 || h < 0 || sample >= run.samples) return null;
      return cellIndex(run, pos === null ? 0 : pos + 1, l, c, h, sample);
    };
    const la = members(A, layerKey);
    const lb = members(Bn, layerKey);
    return {
      A, B: Bn, mean, pair, layerKey, half, sample,
      a: find(A, pair ? pair[0] : null),
      b: find(Bn, pair ? pair[1] : null),
      sameSteps: !mean || sameSteps(A.recorded, Bn.recorded),
      sameLayers: la.length === lb.length && la.every((x) => lb.includes(x)),
      layersA: la, layersB: lb,
    };
  }
  function drawCompare() {
    const Bk = window.attnlabBokeh;
    const c = compareCells();
    const { A, B } = c;
    const la = c.a === null ? 0 : layerMax(A, A.layers.findIndex((e) => e.key === c.layerKey));
    const lb = c.b === null ? 0 : layerMax(B, B.layers.findIndex((e) => e.key === c.layerKey));
    const high = Math.max(la, lb) > 0 ? Math.max(la, lb) : 1;
    Bk.cmp_mapper.low = 0;
    Bk.cmp_mapper.high = high;
    const ma = c.a === null ? null : matrix(A, c.a);
    const mb = c.b === null ? null : matrix(B, c.b);
    Bk.a_src.data = ma ? image(ma) : emptyImage();
    Bk.b_src.data = mb ? image(mb) : emptyImage();
    Bk.a_fig.title.text = `A: ${A.key}`;
    Bk.b_fig.title.text = `B: ${B.key}`;
    setRange(Bk.a_fig, Math.max(A.frames, B.frames));
    $("cmp-step-label").textContent = c.mean
      ? "mean over all recorded steps"
      : `A: ${stepText(A, c.pair[0])} | B: ${stepText(B, c.pair[1])}`;
    const parts = [];
    const many = Math.max(A.samples, B.samples) > 1;
    if (many) {
      parts.push(`sample ${c.sample}` + (A.samples !== B.samples
        ? ` (A has ${A.samples} samples, B ${B.samples}; the samples both have are offered)` : ""));
    }
    if (c.mean) {
      parts.push(c.sameSteps
        ? `mean over the same ${A.recorded.length} recorded steps (t = ${timesteps(A)})`
        : `the means over steps are of different steps, so they are not subtracted: A recorded t = ${timesteps(A)}, ` +
          `B t = ${timesteps(B)}` + (cmp.pairs.length
            ? "; untick “mean over steps” to compare the steps both have"
            : "; the page holds no step of the same timestep in both"));
    } else {
      const [s, t] = [A.steps[c.pair[0]], B.steps[c.pair[1]]];
      parts.push(s.timestep === null
        ? `steps matched by index (neither run recorded timesteps): denoising step ${s.index + 1}`
        : `steps matched by timestep: t = ${+s.timestep.toPrecision(6)}` +
          (s.index !== t.index ? ` (A's denoising step ${s.index + 1}, B's ${t.index + 1})` : ""));
    }
    if (!c.sameLayers && ma && mb) {
      const both = c.layersA.filter((x) => c.layersB.includes(x)).length;
      parts.push(`“${c.layerKey === "all" ? "all layers" : c.layerKey}” is a mean over different layers, so they are not subtracted: ` +
        `A ${c.layersA.length}, B ${c.layersB.length}, ${both} in both (choose a layer both recorded)`);
    }
    let limit = high;
    if (ma && mb && A.frames === B.frames && c.sameSteps && c.sameLayers) {
      const d = nd(Float64Array.from(ma, (v, i) => v - mb[i]), A.frames);
      const flat = Array.from(d).filter((v) => !Number.isNaN(v));
      const maxAbs = flat.length ? Math.max(...flat.map(Math.abs)) : 0;
      const meanAbs = flat.length ? flat.reduce((s, v) => s + Math.abs(v), 0) / flat.length : NaN;
      if (!$("cmp-same").checked && maxAbs > 0) limit = maxAbs;
      Bk.d_src.data = image(d);
      parts.push(`difference A − B: mean |A − B| = ${fmt(meanAbs, 5)}, largest |A − B| = ${fmt(maxAbs, 5)}`);
    } else {
      Bk.d_src.data = emptyImage();
      if (A.frames !== B.frames) {
        parts.push(`no difference map: A has ${A.frames} frames, B ${B.frames} (maps of different sizes do not subtract)`);
      }
    }
    Bk.diff_mapper.low = -limit;
    Bk.diff_mapper.high = limit;
    if (!ma) parts.push("A has no map for this choice");
    if (!mb) parts.push("B has no map for this choice (another step, layer, half or head)");
    [[A, "A"], [B, "B"]].forEach(([run, side]) => {
      if (run.windows) parts.push(`${side}'s maps are the mean of its FreeNoise windows (frames counted within a window)`);
    });
    cmp.difference = Boolean(ma && mb && A.frames === B.frames && c.sameSteps && c.sameLayers);
    parts.push(`A and B on one colour scale, 0 to ${fmt(high, 3)} (the largest value of this layer in either run, ` +
      "over all steps)" + (cmp.difference ? `; the difference from −${fmt(limit, 3)} to ${fmt(limit, 3)}` +
      (limit === high ? " (the maps' scale, signed)" : " (its own largest |A − B|)") : ""));
    $("cmp-caption").textContent = parts.join(" · ");
    cmp.steps = c.pair ? [A.steps[c.pair[0]].index, B.steps[c.pair[1]].index] : null;
  }

  // ---- start -----------------------------------------------------------------------------
  let started = false;
  function start() {
    if (started || !window.attnlabBokeh) return;
    started = true;
    buildTable();
    const options = RUNS.map((r) => ({ value: r.key, label: r.key }));
    fill($("run-select"), options);
    fill($("cmp-a"), options);
    fill($("cmp-b"), options);
    // the comparison opens on the pair asked for, else the first run and the next one of
    // its frame count (maps of different sizes do not subtract)
    const next = RUNS.find((r, i) => i > 0 && r.frames === RUNS[0].frames) || RUNS[1] || RUNS[0];
    const pair = DATA.compare || [RUNS[0].key, next.key];
    $("run-select").value = pair[0];
    $("cmp-a").value = pair[0];
    $("cmp-b").value = pair[1];
    $("run-select").addEventListener("change", setupRun);
    ["step", "layer", "cfg", "head", "sample", "scale"].forEach((id) =>
      $(id).addEventListener("input", drawRun));
    $("step-mean").addEventListener("change", drawRun);
    $("step").addEventListener("input", () => { $("step-mean").checked = false; drawRun(); });
    $("frame").addEventListener("input", () => { stop(); view.frame = Number($("frame").value); drawFrame(); });
    $("show-row").addEventListener("change", markRow);
    $("play").addEventListener("click", play);
    $("cmp-a").addEventListener("change", setupCompare);
    $("cmp-b").addEventListener("change", setupCompare);
    ["cmp-layer", "cmp-cfg", "cmp-head", "cmp-sample"].forEach((id) => $(id).addEventListener("input", drawCompare));
    ["cmp-step-mean", "cmp-same"].forEach((id) => $(id).addEventListener("change", drawCompare));
    $("cmp-step").addEventListener("input", () => { $("cmp-step-mean").checked = false; drawCompare(); });
    setupRun();
    setupCompare();
    window.attnlab.ready = true;
  }

  // what the plots show now, read from their Bokeh data sources (for tests and the console)
  window.attnlab = {
    ready: false,
    runs: () => RUNS.map((r) => r.key),
    displayed: () => {
      const run = view.run;
      const mean = $("step-mean").checked || run.steps.length === 0;
      return {
        run: run.key,
        step: mean ? null : run.steps[Number($("step").value)].index,
        layer: run.layers[Number($("layer").value)].key,
        cfg: run.halves[Number($("cfg").value)],
        head: run.heads[Number($("head").value)],
        image: plain(window.attnlabBokeh.run_src.data.image[0]),
        rows: Array.from(window.attnlabBokeh.row_src.data.y),
      };
    },
    compared: () => {
      const B = window.attnlabBokeh;
      return {
        a: $("cmp-a").value,
        b: $("cmp-b").value,
        image_a: plain(B.a_src.data.image[0]),
        image_b: plain(B.b_src.data.image[0]),
        image_diff: plain(B.d_src.data.image[0]),
        difference: cmp.difference,
        steps: cmp.steps,
        sample: Number($("cmp-sample").value || 0),
        step_label: $("cmp-step-label").textContent,
        caption: $("cmp-caption").textContent,
      };
    },
  };
  window.attnlabStart = start;
  start();
})();
