// The cycle picker shows the chosen cycle at once (the Show button does it without JS).
(function () {
  "use strict";
  const select = document.getElementById("cycle");
  if (select) select.addEventListener("change", function () { select.form.submit(); });
})();
