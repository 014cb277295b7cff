// The reference outputs of a TF.js graph model, run by TF.js itself (CPU backend), for export/tfjs.py's parity check.
// usage: node tfjs_reference.js model.json input.bin out_dir
//   input.bin: float32 values of the model's one input; writes output_<i>.bin (signature order) and shapes.json
const fs = require('fs'); const path = require('path');
const tf = require('@tensorflow/tfjs-core'); require('@tensorflow/tfjs-backend-cpu');
const { loadGraphModel } = require('@tensorflow/tfjs-converter');
(async () => {
  const [modelJson, inputBin, outDir] = process.argv.slice(2);
  const model = JSON.parse(fs.readFileSync(modelJson));
  const specs = model.weightsManifest.flatMap((g) => g.weights);
  const data = Buffer.concat(model.weightsManifest.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(path.dirname(modelJson), p)))));
  await tf.setBackend('cpu');
  const graph = await loadGraphModel(tf.io.fromMemory({ modelTopology: model.modelTopology, weightSpecs: specs, weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.length) }));
  const input = Object.values(model.signature.inputs)[0];
  const shape = input.tensorShape.dim.map((d) => parseInt(d.size));
  const buf = fs.readFileSync(inputBin);
  const x = tf.tensor(new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4), shape);
  const names = Object.keys(model.signature.outputs);
  const outs = graph.execute(x, names);
  const shapes = {};
  names.forEach((n, i) => { fs.writeFileSync(path.join(outDir, `output_${i}.bin`), Buffer.from(outs[i].dataSync().buffer)); shapes[`output_${i}`] = outs[i].shape; });
  fs.writeFileSync(path.join(outDir, 'shapes.json'), JSON.stringify(shapes));
})().catch((e) => { console.error(e.message); process.exit(1); });
