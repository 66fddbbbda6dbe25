// Loads analytics.js (@segment/analytics-next, unmodified) the documented way, pointed at Consentry:
// window.shopConfig = {consentry: "http://127.0.0.1:PORT", key: WRITE_KEY, batch: SIZE or null}, set by
// the test before the page's scripts run (cdnURL = Consentry, whose /v1/projects/{key}/settings names
// itself as apiHost). window.shop resolves to the
// analytics instance once loaded, or rejects when loading fails (a refused origin).
(function () {
  var config = window.shopConfig;
  var options = {};
  if (config.batch) {
    options.integrations = {
      "Segment.io": {
        deliveryStrategy: { strategy: "batching", config: { size: config.batch, timeout: 600000 } },
      },
    };
  }
  window.shop = window.AnalyticsNext.AnalyticsBrowser.load(
    { writeKey: config.key, cdnURL: config.consentry },
    options
  ).then(function (loaded) {
    return loaded[0];
  });
})();
