// The microphone as 24 kHz mono 16-bit little-endian PCM, posted in pieces of 100 ms (an
// ArrayBuffer each) for realtime.js to send. Runs on the audio thread, at the context's rate.
const RATE = 24000;
const PIECE = RATE / 10;

class Pcm24k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per output sample
    this.next = this.step >= 1 ? this.step : 0; // where the next output sample falls, in input samples
    this.seen = 0; // input samples so far
    this.sum = 0; // downsampling: the input samples the next output sample stands for
    this.count = 0;
    this.last = 0; // upsampling: the input sample before this one
    this.piece = new DataView(new ArrayBuffer(PIECE * 2));
    this.filled = 0;
    // "flush": post what is held now (the microphone has stopped), then "flushed"
    this.port.onmessage = (event) => {
      if (event.data !== "flush") return;
      this.post();
      this.port.postMessage("flushed");
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels?.length) return true;
    for (let i = 0; i < channels[0].length; i++) {
      let x = 0;
      for (const channel of channels) x += channel[i];
      x /= channels.length;
      if (this.step >= 1) {
        // Downsampling averages the samples each output sample stands for: a box filter,
        // which keeps most of what lies above the new Nyquist frequency from folding back.
        this.sum += x;
        this.count++;
        if (++this.seen >= this.next) {
          this.emit(this.sum / this.count);
          this.sum = this.count = 0;
          this.next += this.step;
        }
      } else {
        // Upsampling (a microphone slower than 24 kHz) interpolates linearly.
        for (; this.next <= this.seen; this.next += this.step) {
          this.emit(this.last + (x - this.last) * (1 - (this.seen - this.next)));
        }
        this.last = x;
        this.seen++;
      }
    }
    return true;
  }

  emit(x) {
    const clipped = Math.max(-1, Math.min(1, x));
    this.piece.setInt16(this.filled * 2, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
    if (++this.filled === PIECE) this.post();
  }

  post() {
    if (!this.filled) return;
    const buffer = this.piece.buffer.slice(0, this.filled * 2);
    this.port.postMessage(buffer, [buffer]);
    this.filled = 0;
  }
}

registerProcessor("pcm24k", Pcm24k);
