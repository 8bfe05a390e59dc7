// ask_button: press a button, get an answer from OpenAI over MQTT, printed on
// the serial monitor as it streams in (115200 baud).
//
// For an ESP32 (Arduino core) with the PubSubClient library, at its default
// 256-byte buffer. A press publishes one `ask` on ai/<id>/cmd; openai-mqtt-bridge
// opens the connection if needed, keeps the conversation (the next press
// continues it) and, because the ask asks for it in "output", publishes:
//   ai/<id>/text    the answer as plain UTF-8 chunks of at most 200 bytes
//                   (text_max_bytes), split at word boundaries, in order;
//   ai/<id>/status  retained: ready, thinking, streaming or closed.
// and no JSON events: server events and the ai/<id>/answer object are often
// larger than the 256-byte buffer (PubSubClient silently drops what does not fit).
// "output" takes effect when the ask opens the connection: give each device an
// id of its own, or set the same output in the id's profile in the bridge config.

#include <WiFi.h>
#include <PubSubClient.h>

// ---- secrets ----------------------------------------------------------------
#define WIFI_SSID     "your-wifi"
#define WIFI_PASSWORD "your-wifi-password"
#define MQTT_HOST     "192.168.1.10"  // the broker the bridge uses
#define MQTT_PORT     1883
#define MQTT_USER     ""              // leave "" for a broker without passwords
#define MQTT_PASSWORD ""

// ---- this device -------------------------------------------------------------
// The connection id: the bridge keeps one conversation per id. At most 41
// characters, so that a 200-byte text chunk (the bridge's default text_max_bytes)
// arrives whole in the 256-byte buffer: a QoS 1 PUBLISH takes 1 byte of header, 2 of
// length, 2 + the topic ai/<id>/text (8 + id), 2 of packet id, then the 200.
#define CONNECTION_ID "desk-button"

#define TOPIC_CMD    "ai/" CONNECTION_ID "/cmd"
#define TOPIC_TEXT   "ai/" CONNECTION_ID "/text"
#define TOPIC_STATUS "ai/" CONNECTION_ID "/status"
#define MQTT_CLIENT_ID "ask-button-" CONNECTION_ID  // unique on the broker

// The whole command, well under 200 bytes. No request_id: the bridge would
// take a byte-identical command with the same request_id within 30 s for a
// redelivery and drop it, so a second press would go unanswered.
#define ASK_COMMAND                                                              \
  "{\"action\":\"ask\",\"input\":\"Tell me one surprising fact about octopuses,"  \
  " in two sentences.\",\"output\":{\"text\":true,\"events\":false,\"status\":true}}"

const int BUTTON_PIN = 0;                  // the BOOT button of most ESP32 boards
const unsigned long DEBOUNCE_MS = 50;      // the level must hold this long
const unsigned long RETRY_MS = 5000;       // between MQTT connection attempts

WiFiClient net;
PubSubClient mqtt(net);

bool midLine = false;  // text printed since the last newline

// Everything we subscribed to arrives here. The payload is not NUL-terminated.
void onMessage(char* topic, byte* payload, unsigned int length) {
  if (strcmp(topic, TOPIC_TEXT) == 0) {
    Serial.write(payload, length);  // the next piece of the answer, as it comes
    midLine = true;
  } else if (strcmp(topic, TOPIC_STATUS) == 0) {
    // The bridge repeats `thinking` while the model thinks: print changes only.
    static char last[16] = "";
    if (length == 0) {  // the bridge cleared the retained status: the conversation ended
      last[0] = '\0';   // whatever comes next is news
      return;
    }
    char status[sizeof last];
    unsigned int n = length < sizeof status - 1 ? length : sizeof status - 1;
    memcpy(status, payload, n);
    status[n] = '\0';
    if (strcmp(status, last) == 0) return;
    strcpy(last, status);
    if (midLine) Serial.println();
    Serial.print("[status] ");
    Serial.println(status);
    midLine = false;
  }
}

// Connect to the broker when not connected, at most once every RETRY_MS, without
// blocking the loop; subscribe again after every (re)connect.
void keepMqtt() {
  static unsigned long nextAttempt = 0;
  static bool wifiWasUp = false;
  bool wifiUp = WiFi.status() == WL_CONNECTED;
  if (wifiUp != wifiWasUp) {  // the core rejoins the network by itself; just say so
    wifiWasUp = wifiUp;
    Serial.println(wifiUp ? "WiFi: connected" : "WiFi: not connected");
  }
  if (mqtt.connected()) {
    mqtt.loop();
    return;
  }
  if (!wifiUp || (long)(millis() - nextAttempt) < 0) return;
  nextAttempt = millis() + RETRY_MS;
  Serial.print("MQTT: connecting to " MQTT_HOST "... ");
  bool ok = MQTT_USER[0] ? mqtt.connect(MQTT_CLIENT_ID, MQTT_USER, MQTT_PASSWORD)
                         : mqtt.connect(MQTT_CLIENT_ID);
  if (!ok) {
    Serial.printf("failed (state %d), retrying in %lu s\n", mqtt.state(), RETRY_MS / 1000);
    return;
  }
  Serial.println("connected");
  mqtt.subscribe(TOPIC_TEXT, 1);
  mqtt.subscribe(TOPIC_STATUS, 1);  // retained: the current status comes at once
}

void ask() {
  if (!mqtt.connected()) {
    Serial.println("Not connected to MQTT: press again later.");
    return;
  }
  if (midLine) Serial.println();
  Serial.println("> asking");
  midLine = false;
  if (!mqtt.publish(TOPIC_CMD, ASK_COMMAND)) Serial.println("publish failed");
}

// Ask once per press: on a HIGH -> LOW change that holds for DEBOUNCE_MS.
void pollButton() {
  static int lastReading = HIGH, stableLevel = HIGH;
  static unsigned long lastChange = 0;
  int reading = digitalRead(BUTTON_PIN);
  if (reading != lastReading) {
    lastReading = reading;
    lastChange = millis();
  }
  if (millis() - lastChange >= DEBOUNCE_MS && reading != stableLevel) {
    stableLevel = reading;
    if (stableLevel == LOW) ask();
  }
}

void setup() {
  Serial.begin(115200);
  pinMode(BUTTON_PIN, INPUT_PULLUP);  // pressed = LOW
  WiFi.mode(WIFI_STA);
  WiFi.setAutoReconnect(true);        // the core rejoins the network after a drop
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  mqtt.setCallback(onMessage);
  // No setBufferSize: the default 256 bytes is enough for text chunks of 200.
}

void loop() {
  keepMqtt();
  pollButton();
}
