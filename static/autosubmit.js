// Submit forms marked data-autosubmit as soon as the page loads. A person who clicks a link
// in an email is confirmed (or marks the lesson done) at once; a mail scanner that only GETs
// the page changes nothing. The button stays for anyone without JavaScript.
(function () {
  "use strict";
  function submitAll(event) {
    if (event && event.persisted) {
      return; // back from the page we posted to: don't post again
    }
    var forms = document.querySelectorAll("form[data-autosubmit]");
    for (var i = 0; i < forms.length; i++) {
      var form = forms[i];
      if (form.getAttribute("data-submitted")) {
        continue;
      }
      form.setAttribute("data-submitted", "1");
      var button = form.querySelector("button[type=submit]");
      if (button) {
        button.disabled = true;
        button.textContent = "One moment\u2026";
      }
      form.submit();
    }
  }
  window.addEventListener("pageshow", submitAll);
})();
