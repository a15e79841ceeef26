// Streams answers from /api/chat/ over server-sent events (fetch + ReadableStream, since
// EventSource cannot POST). Without JavaScript the form posts and the page reloads.
(function () {
  "use strict";
  const chat = document.getElementById("chat");
  const form = document.getElementById("chat-form");
  if (!chat || !form || !window.fetch || !window.ReadableStream) return;
  const list = document.getElementById("messages");
  const prompt = document.getElementById("prompt");
  const send = document.getElementById("send");
  const errorBox = document.getElementById("chat-error");
  const errorText = document.getElementById("chat-error-text");
  const retry = document.getElementById("retry");
  let following = true;  // the page follows new content (the user has not scrolled up)

  function csrfToken() {
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function addMessage(role, text, extraClass) {
    const empty = document.getElementById("empty-state");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.className = "message message-" + role + (extraClass ? " " + extraClass : "");
    const label = document.createElement("span");
    label.className = "role";
    label.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    li.append(label, content);
    list.append(li);
    if (following) li.scrollIntoView({ block: "end" });
    return { li, label, content };
  }

  // The small buttons answers and prompts carry.
  function smallButton(className, label, ariaLabel, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = className + " secondary small-button";
    button.textContent = label;
    button.setAttribute("aria-label", ariaLabel);
    button.addEventListener("click", onClick);
    return button;
  }

  // A button that copies `text()` and says so for a moment.
  function copyButton(className, label, ariaLabel, text) {
    const button = smallButton(className, label, ariaLabel, function () {
      navigator.clipboard.writeText(text()).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      });
    });
    return button;
  }

  // A Copy button on every code block of an answer.
  function addCopyButtons(root) {
    if (!navigator.clipboard) return;
    root.querySelectorAll("pre").forEach(function (pre) {
      if (pre.querySelector(".copy-code")) return;
      const code = () => (pre.querySelector("code") || pre).innerText;
      pre.prepend(copyButton("copy-code", "Copy", "Copy this code", code));
    });
  }
  addCopyButtons(list);

  // A message that was not answered goes back in the box, before anything typed since.
  function restore(text) {
    const typed = prompt.value.trim();
    prompt.value = typed && typed !== text ? text + "\n\n" + typed : text;
    showEstimate();
  }
  let failedText = "";

  // Follow the newest content while the user has not scrolled up; else offer a way back.
  const jump = document.getElementById("jump-latest");
  function atLatest() {
    const last = list.lastElementChild;
    if (!last) return true;
    return last.getBoundingClientRect().bottom <= window.innerHeight - form.offsetHeight + 48;
  }
  function showLatest() {
    const last = list.lastElementChild;
    if (last) last.scrollIntoView({ block: "end" });
  }
  window.addEventListener("scroll", function () {
    following = atLatest();
    if (jump) jump.hidden = following;
  }, { passive: true });
  if (jump) jump.addEventListener("click", function () {
    following = true;
    jump.hidden = true;
    showLatest();
  });
  // The composer's height is kept clear at the end of the conversation, so the newest
  // message never sits behind it.
  function keepComposerClear() {
    document.documentElement.style.setProperty("--composer-height", form.offsetHeight + "px");
  }
  if (window.ResizeObserver) new ResizeObserver(keepComposerClear).observe(form);
  keepComposerClear();

  // Copy a whole answer, as its text.
  function addCopyAnswer(li) {
    if (!navigator.clipboard || li.querySelector(".copy-answer")) return;
    const text = () => li.querySelector(".content").innerText;
    li.append(copyButton("copy-answer", "Copy answer", "Copy this whole answer", text));
  }
  list.querySelectorAll(".message-assistant").forEach(addCopyAnswer);

  // Markdown as it arrives: the same parser the server uses (markdown-it, of which the
  // server's markdown-it-py is the port; same options) and a sanitiser with the server's
  // allowlist (DOMPurify, as nh3 there). At most once a frame; code is highlighted, and
  // table alignment kept, when the server's rendering replaces it at the end.
  const markdown = window.markdownit
    ? window.markdownit("commonmark", { html: false }).enable(["table", "strikethrough"])
    : null;
  const SANITISE = {
    ALLOWED_TAGS: ["p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "span",
      "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead",
      "tbody", "tr", "th", "td", "a", "div"],
    ALLOWED_ATTR: ["href", "title", "class", "start"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  };
  if (window.DOMPurify) {
    window.DOMPurify.addHook("afterSanitizeAttributes", function (node) {
      if (node.tagName === "A") node.setAttribute("rel", "noopener nofollow");
    });
  }
  function showStreaming(answer) {
    if (answer.frame) return;
    answer.frame = requestAnimationFrame(function () {
      answer.frame = null;
      if (!answer.li.classList.contains("streaming")) return;  // the final rendering is in
      if (markdown && window.DOMPurify) {
        const html = markdown.render(answer.raw).replaceAll("<pre><code", '<pre class="highlight"><code');
        answer.content.innerHTML = window.DOMPurify.sanitize(html, SANITISE);
        answer.li.classList.add("rendered");
      } else {
        answer.content.textContent = answer.raw;
      }
      if (following) showLatest();
    });
  }

  // After a stream ended early (stopped, or broken), the page takes the conversation as the
  // server renders it, so that it says what a reload will say (the cost, "cut short"). The
  // server saves such an answer a moment after the stream ends: ask a few times.
  async function resync() {
    if (!chat.dataset.conversationId) return;
    for (let attempt = 1; attempt <= 8; attempt++) {
      await new Promise((done) => setTimeout(done, 200 * attempt));
      let doc;
      try {
        const response = await fetch(form.action, { credentials: "same-origin" });
        if (!response.ok) return;
        doc = new DOMParser().parseFromString(await response.text(), "text/html");
      } catch (e) {
        return;  // offline: what is shown stays
      }
      const fresh = doc.getElementById("messages");
      const last = fresh && fresh.lastElementChild;
      if (!last || !last.classList.contains("message-assistant")) continue;
      list.replaceChildren(...Array.from(fresh.children).map((li) => document.importNode(li, true)));
      addCopyButtons(list);
      list.querySelectorAll(".message-assistant").forEach(addCopyAnswer);
      offerAgain();
      return;
    }
  }

  // The last exchange can be asked again: Regenerate sends the last prompt again, Edit puts
  // it back in the box to change and send. Each is a new turn, billed and shown as one.
  function lastOf(role) {
    const all = list.querySelectorAll(".message-" + role);
    return all.length ? all[all.length - 1] : null;
  }
  function offerAgain() {
    list.querySelectorAll(".regenerate, .edit-prompt").forEach((b) => b.remove());
    const question = lastOf("user");
    const reply = lastOf("assistant");
    if (!question || question.classList.contains("message-failed")) return;
    const text = question.querySelector(".content").innerText.trim();
    if (!text) return;
    question.append(smallButton("edit-prompt", "Edit", "Edit this message and send it again",
      function () {
        prompt.value = text;
        showEstimate();
        prompt.focus();
      }));
    if (reply && reply.compareDocumentPosition(question) & Node.DOCUMENT_POSITION_PRECEDING) {
      reply.append(smallButton("regenerate", "Regenerate",
        "Ask the same question again for a new answer",
        function () { if (!send.disabled) submit(text); }));
    }
  }

  function showError(message) {
    errorText.textContent = message;
    errorBox.hidden = false;
    retry.hidden = false;
  }

  const stop = document.getElementById("stop");
  const announce = document.getElementById("announce");
  const title = document.getElementById("chat-title");
  let controller = null;  // aborts the stream in flight: the server settles what arrived

  function setBusy(busy) {
    send.disabled = busy;
    send.setAttribute("aria-busy", busy ? "true" : "false");
    send.hidden = busy;
    stop.hidden = !busy;
  }

  stop.addEventListener("click", function () {
    if (controller) controller.abort();
  });
  // Esc stops an answer while it streams, wherever the focus is.
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !stop.hidden && controller) {
      event.preventDefault();
      controller.abort();
    }
  });

  // The conversation opens at its latest message.
  if (list.lastElementChild) list.lastElementChild.scrollIntoView({ block: "end" });

  function onConversation(id, firstLine) {
    if (!id || chat.dataset.conversationId === id) return;
    // A new conversation is named after its first message, as the server names it.
    const name = (firstLine || "New conversation").split("\n")[0].slice(0, 80);
    title.textContent = name;
    document.title = name + " · chatusage";
    chat.dataset.conversationId = id;
    const url = chat.dataset.conversationUrlTemplate.replace(
      "00000000-0000-0000-0000-000000000000", id);
    form.action = url;
    history.replaceState(null, "", url);
    // A new conversation joins the list on the left, as it will after a reload.
    const nav = document.querySelector(".conversations nav");
    if (nav) {
      const placeholder = nav.querySelector("li.muted");
      if (placeholder) placeholder.closest("ul").remove();
      nav.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
      // Under "Today", as the page will list it after a reload.
      let heading = nav.querySelector(".conversation-group");
      if (!heading || heading.textContent !== "Today") {
        const today = document.createElement("h2");
        today.className = "conversation-group";
        today.textContent = "Today";
        nav.prepend(today, document.createElement("ul"));
        heading = today;
      }
      const li = document.createElement("li");
      const link = document.createElement("a");
      link.href = url;
      link.textContent = name;
      link.setAttribute("aria-current", "page");
      li.append(link);
      heading.nextElementSibling.prepend(li);
    }
  }

  function money(value, places) {
    const amount = Number(value);
    if (amount && Math.abs(amount) < Math.pow(10, -places)) places = 6;
    return "$" + amount.toLocaleString("en-US", { minimumFractionDigits: places,
                                                 maximumFractionDigits: places });
  }

  function formatUsage(usage) {
    return usage.total_tokens.toLocaleString("en-US") + " tokens · " + money(usage.cost_usd, 4) +
      (usage.estimated ? " · estimated" : "") +
      (usage.truncated ? " · cut at the length limit" : "");
  }

  // Below each answer, as the page shows it after a reload.
  function showAnswerMeta(answerLi, usage) {
    const meta = document.createElement("small");
    meta.className = "answer-meta";
    meta.textContent = formatUsage(usage);
    answerLi.append(meta);
  }

  // The money line under the title: left, of what, when it resets; amber from 80%.
  const budgetLine = document.getElementById("budget-line");
  const creditCard = document.getElementById("credit-empty");
  const DRAFT_KEY = "chatusage-draft";
  const draft = sessionStorage.getItem(DRAFT_KEY);
  if (draft && !form.hidden && !prompt.value) {
    prompt.value = draft;  // refused for credit before the top-up: it is back
    sessionStorage.removeItem(DRAFT_KEY);
  }
  function showBudget(budget) {
    if (!budgetLine || !budget || !budget.budget) return;
    // "27 Dec", as the server writes it.
    const resets = new Date(budget.resets_at).toLocaleDateString("en-GB",
      { day: "numeric", month: "short" });
    budgetLine.textContent = money(budget.left, 2) + " left of " + money(budget.budget, 2) +
      " · resets " + resets;
    budgetLine.className = "budget-line small budget-" + budget.state;
    budgetLine.hidden = false;
    if (budget.state === "empty") window.location.reload();  // the server shows the card
  }

  async function submit(text) {
    errorBox.hidden = true;
    setBusy(true);
    const mine = addMessage("user", text);
    // Sent: the box is free for the next message at once. What is typed meanwhile is
    // never touched when this answer ends.
    prompt.value = "";
    showEstimate();
    following = true;
    let answer = null;
    let failed = false;
    let partialError = "";
    controller = new AbortController();
    try {
      const response = await fetch(chat.dataset.apiUrl, {
        signal: controller.signal,
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(),
                   "Accept": "text/event-stream" },
        body: JSON.stringify({ prompt: text, conversation_id: chat.dataset.conversationId || null,
                               stream: true }),
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        let data = {};
        try { data = await response.json(); } catch (e) { /* not JSON */ }
        if (data.conversation_id) onConversation(data.conversation_id, text);
        const error = new Error(data.error || ("The server answered " + response.status + "."));
        // Refused before the call (bad input, limits, rate): nothing was saved, and the
        // same message would be refused again, so no Retry; the text stays to edit.
        error.refused = response.status < 500;
        error.topUp = data.code === "insufficient_credits";
        throw error;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          let data = "";
          for (const line of frame.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          const payload = data ? JSON.parse(data) : {};
          if (event === "start") {
            onConversation(payload.conversation_id, text);
            answer = addMessage("assistant", "", "streaming");
            answer.raw = "";
            if (payload.demo) answer.label.insertAdjacentHTML("beforeend", ' <span class="badge">demo</span>');
          } else if (event === "delta") {
            answer.raw += payload.text;
            showStreaming(answer);
          } else if (event === "done") {
            answer.li.classList.remove("streaming");
            // The server's rendering (markdown, highlighted, sanitised) replaces the text
            // that streamed in, exactly as a reload would show it.
            answer.content.innerHTML = payload.html;
            addCopyButtons(answer.content);
            showAnswerMeta(answer.li, payload.usage);
            addCopyAnswer(answer.li);
            showBudget(payload.budget);
            offerAgain();
            if (payload.estimate) setEstimateBasis(payload.estimate);
            if (following) showLatest();
            announce.textContent = "Answer complete.";
          } else if (event === "error") {
            if (answer && payload.response) {
              // Part of the answer arrived before the failure: it was billed, so it stays,
              // with the reason it stops there.
              answer.li.classList.remove("streaming");
              answer.content.innerHTML = payload.html;
              addCopyButtons(answer.content);
              answer.li.classList.add("message-interrupted");
              const note = document.createElement("small");
              note.className = "muted";
              note.textContent = "Cut short: " + payload.error;
              answer.li.append(note);
              showAnswerMeta(answer.li, payload.usage);
              showBudget(payload.budget);
              answer = null;
              partialError = payload.error;
              continue;
            }
            throw new Error(payload.error);
          }
        }
      }
      if (answer && answer.li.classList.contains("streaming")) {
        throw new Error("The connection ended before the answer was complete.");
      }
      if (partialError) {
        errorText.textContent = partialError;
        errorBox.hidden = false;
      }
    } catch (err) {
      if (err.name === "AbortError" && answer) {
        // Stopped by the user: what arrived stays, as a reload will show it.
        answer.li.classList.remove("streaming");
        const note = document.createElement("small");
        note.className = "muted";
        note.textContent = "Stopped. What arrived is kept and billed as an estimate.";
        answer.li.append(note);
        announce.textContent = "Answer stopped.";
        resync();  // then the server's own rendering, with what it was billed
        return;
      }
      if (answer && (answer.raw || answer.content.textContent) && !err.refused) {
        // Part of an answer arrived before the stream broke: the server keeps and bills
        // it, so it stays, cut short, and sending it again is not offered. Then the page
        // shows it as a reload will, once the server has saved it.
        answer.li.classList.remove("streaming");
        answer.li.classList.add("message-interrupted");
        const note = document.createElement("small");
        note.className = "muted";
        note.textContent = "Cut short: " + (err.message || "the connection broke.");
        answer.li.append(note);
        errorText.textContent = err.message || "The connection broke.";
        errorBox.hidden = false;
        retry.hidden = true;
        resync();
        return;
      }
      failed = true;
      if (answer) answer.li.remove();
      restore(text);  // never lose what the user wrote
      failedText = text;
      showError(err.message || "The message could not be sent.");
      if (err.topUp && creditCard) {
        // Out of credit: the top-up card replaces the composer, and the message waits
        // in this tab for the way back from Billing.
        sessionStorage.setItem(DRAFT_KEY, text);
        creditCard.hidden = false;
        form.hidden = true;
      }
      if (err.refused) {
        mine.li.remove();
        retry.hidden = true;
      } else {
        // As a reload shows it: kept, marked, with Retry beside the error.
        mine.li.classList.add("message-failed");
        const note = document.createElement("small");
        note.className = "muted";
        note.textContent = "Not answered.";
        mine.li.append(note);
      }
    } finally {
      setBusy(false);
      if (!failed) prompt.focus();
    }
  }

  // While typing: about how many tokens go in, and the most this message can cost (the
  // hold reserve() will place: history bound + the prompt's UTF-8 bytes, max output).
  const estimateLine = document.getElementById("estimate-line");
  function showEstimate() {
    if (!estimateLine || !estimateLine.dataset.baseTokens) return;
    const text = prompt.value.trim();
    if (!text) { estimateLine.textContent = ""; return; }
    const bytes = new TextEncoder().encode(text).length;
    const bound = Number(estimateLine.dataset.baseTokens) + bytes;
    const cost = bound * Number(estimateLine.dataset.inputPrice) +
      Number(estimateLine.dataset.outputCost);
    // The charge, as reserve() holds it: with the markup, rounded half-up to 6 places.
    const markup = 1 + Number(estimateLine.dataset.markupPercent || 0) / 100;
    const most = Math.round(cost * markup * 1e6) / 1e6;
    estimateLine.textContent = "about " + Math.ceil(bound / 4).toLocaleString("en-US") +
      " tokens in · at most " + money(most, 4) + " for this message";
  }
  // After each answer the server sends the basis reserve() will use next (the history
  // grew): the estimate follows it instead of going stale.
  function setEstimateBasis(basis) {
    if (!estimateLine) return;
    estimateLine.dataset.baseTokens = basis.base_tokens;
    estimateLine.dataset.inputPrice = basis.input_price;
    estimateLine.dataset.outputCost = basis.output_cost;
    estimateLine.dataset.markupPercent = basis.markup_percent;
    showEstimate();
  }
  prompt.addEventListener("input", showEstimate);
  showEstimate();
  offerAgain();

  // On a phone the conversation list is a drawer, closed until asked for.
  const drawer = document.getElementById("conversation-drawer");
  if (drawer && window.matchMedia && window.matchMedia("(max-width: 768px)").matches) {
    drawer.open = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || send.disabled) return;
    submit(text);
  });
  // Enter sends on a keyboard; on a touch screen it is a new line and Send sends.
  const touch = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
  prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !touch) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  // Retry submits the form (it works without JavaScript too); the failed copy of the
  // prompt makes way for the one the new attempt shows.
  retry.addEventListener("click", function (event) {
    const failedMessages = list.querySelectorAll(".message-user.message-failed");
    if (failedMessages.length) failedMessages[failedMessages.length - 1].remove();
    if (!failedText || send.disabled) return;
    // The failed message again, not whatever has been typed since (that stays in the box).
    event.preventDefault();
    const text = failedText;
    failedText = "";
    const typed = prompt.value.trim();
    if (typed === text) prompt.value = "";
    else if (typed.startsWith(text + "\n\n")) prompt.value = typed.slice(text.length + 2);
    submit(text);
  });
})();
