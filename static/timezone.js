// Fill the signup form's hidden time-zone field with the browser's IANA zone, so lessons
// arrive in the morning where the reader lives. Without JS the server uses the course default.
(function () {
  "use strict";
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    zone = "";
  }
  if (!zone) {
    return;
  }
  var fields = document.querySelectorAll("input[data-browser-timezone]");
  for (var i = 0; i < fields.length; i++) {
    if (!fields[i].value) {
      fields[i].value = zone;
    }
  }
})();
