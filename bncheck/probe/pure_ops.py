"""The graph ops the probe runs without ``--unsafe``: those known to have no effect outside the
process. TensorFlow-free, and free of the ``onnx`` package: plain sets of names.

A graph runs only if every op in it, function libraries and subgraphs included, is listed here;
anything else (a file, network, print, summary, checkpoint, dataset or Python op, or an op
nobody knows) refuses the probe with BN017 naming it. Allowing what is known to be pure, rather
than denying what is known to be bad, keeps the ops of a newer TensorFlow, a custom kernel or a
contrib domain out until someone has looked at them.

How the lists were derived (TensorFlow 2.21, ``onnx`` 1.23; rerun when either adds ops):

- ``TF_COMPUTE_OPS``: every op of TensorFlow's registry (``tf.raw_ops``) that its ``OpDef``
  declares stateless (``op_def_registry.get(name).is_stateful`` is false) and that is
  generated into one of the computation modules ``tensorflow/python/ops/gen_{array, bitwise,
  control_flow, functional, image, linalg, list, manip, math, nn, rnn, special_math, spectral,
  stateless_random}_ops.py`` and ``gen_stateless_random_ops_v2.py`` (one module per
  ``tensorflow/core/ops/*.cc`` file of that name), less the ops whose name says I/O, code or
  a crash however stateless they are declared: ``ImmutableConst`` (maps a file into memory),
  ``Abort`` (ends the process), ``Debug*``, ``SymbolicGradient`` (not needed to run a
  model) and the image codecs (``Decode*``, ``Encode*``, ``ExtractJpegShape``: a model is
  fed arrays, and codecs are where parsers have had memory bugs). The modules left out hold
  files (``io``: ``ReadFile``, ``WriteFile``, ``MatchingFiles``, savers, readers),
  printing and summaries (``logging``, ``summary``), datasets, Python (``script``:
  ``PyFunc``, ``EagerPyFunc``), debugging, queues and sessions (``data_flow``), lookup
  tables (initialised from text files), training and optimiser updates, proto codecs (a
  descriptor may be read from a file), collectives, send/receive, TPU and parsing.
- ``TF_STATEFUL_OPS``: declared stateful, yet with no effect outside the process, and needed
  to run SavedModels that Keras 3 (``model.export``), tf-keras (``model.save``) and
  ``tf.saved_model.save`` write: calls and control flow whose functions are checked in turn,
  variables in memory, random draws (Dropout in tf-keras's training mode), assertions that stop
  the run, cuDNN recurrent layers (tf-keras keeps them beside the generic ones) and the
  TensorArray ops of TF1 while loops.
- ``TF_SAVE_OPS`` and ``TF_RESTORE_OPS``: every SavedModel carries its saver, the functions
  its ``saver_def`` names, which write and read checkpoints (``SaveV2``, ``RestoreV2``).
  They are allowed there and only there, in functions that nothing but the saver's two nodes
  calls: ``tf.saved_model.load`` never runs them (it restores with ops of its own), and a TF1
  SavedModel, whose loader runs top-level nodes, is not probed without ``--unsafe`` at all
  (``savedmodel`` says why). A file-writing op anywhere else, or an op in the saver beyond
  these, refuses the probe.
- ``ONNX_OPS``: ``onnx.defs.get_all_schemas_with_history()`` of the default domain
  (``""``, also spelt ``ai.onnx``), less the random generators (``RandomNormal``,
  ``RandomUniform`` and their ``*Like``, ``Multinomial``, ``Bernoulli``): two runs of
  the same batch would differ, and the probe compares runs; and ``ImageDecoder``, a codec, as
  in TensorFlow. No standard ONNX op does I/O.
  ``ONNX_ML_OPS``: the same for ``ai.onnx.ml`` (trees, scalers, encoders). Other domains
  (``com.microsoft`` contrib ops, custom ops, ``ai.onnx.preview.training``) are refused.
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


TF_COMPUTE_OPS = _names(
    """
    Abs AccumulateNV2 Acos Acosh Add AddN AddV2 AdjustContrast AdjustContrastv2 AdjustHue
    AdjustSaturation All Angle Any ApproxTopK ApproximateEqual ArgMax ArgMin Asin Asinh Atan
    Atan2 Atanh AvgPool AvgPool3D AvgPool3DGrad AvgPoolGrad BandedTriangularSolve BatchCholesky
    BatchCholeskyGrad BatchFFT BatchFFT2D BatchFFT3D BatchIFFT BatchIFFT2D BatchIFFT3D
    BatchMatMul BatchMatMulV2 BatchMatMulV3 BatchMatrixBandPart BatchMatrixDeterminant
    BatchMatrixDiag BatchMatrixDiagPart BatchMatrixInverse BatchMatrixSetDiag BatchMatrixSolve
    BatchMatrixSolveLs BatchMatrixTriangularSolve BatchNormWithGlobalNormalization
    BatchNormWithGlobalNormalizationGrad BatchSelfAdjointEig BatchSelfAdjointEigV2 BatchSvd
    BatchToSpace BatchToSpaceND BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1 BesselK0
    BesselK0e BesselK1 BesselK1e BesselY0 BesselY1 Betainc BiasAdd BiasAddGrad BiasAddV1
    Bincount Bitcast BitwiseAnd BitwiseOr BitwiseXor BlockLSTM BlockLSTMGrad BlockLSTMGradV2
    BlockLSTMV2 BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize Cast Ceil Cholesky
    CholeskyGrad ClipByValue CombinedNonMaxSuppression Complex ComplexAbs Concat ConcatOffset
    ConcatV2 Conj ConjugateTranspose Const ControlTrigger Conv Conv2D Conv2DBackpropFilter
    Conv2DBackpropFilterV2 Conv2DBackpropInput Conv2DBackpropInputV2 Conv3D Conv3DBackpropFilter
    Conv3DBackpropFilterV2 Conv3DBackpropInput Conv3DBackpropInputV2 Cos Cosh CropAndResize
    CropAndResizeGradBoxes CropAndResizeGradImage Cross Cumprod Cumsum CumulativeLogsumexp
    DataFormatDimMap DataFormatVecPermute Dawsn DenseBincount DepthToSpace DepthwiseConv2dNative
    DepthwiseConv2dNativeBackpropFilter DepthwiseConv2dNativeBackpropInput Dequantize Diag
    DiagPart Digamma Dilation2D Dilation2DBackpropFilter Dilation2DBackpropInput Div DivNoNan
    DrawBoundingBoxes DrawBoundingBoxesV2 EditDistance Eig Einsum Elu EluGrad EmptyTensorList
    EnsureShape Enter Equal Erf Erfc Erfinv EuclideanNorm Exit Exp ExpandDims Expint Expm1
    ExtractGlimpse ExtractGlimpseV2 ExtractImagePatches ExtractVolumePatches FFT FFT2D FFT3D
    FFTND FakeParam FakeQuantWithMinMaxArgs FakeQuantWithMinMaxArgsGradient
    FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsGradient FakeQuantWithMinMaxVarsPerChannel
    FakeQuantWithMinMaxVarsPerChannelGradient Fill Fingerprint Floor FloorDiv FloorMod For
    FractionalAvgPool FractionalAvgPoolGrad FractionalMaxPool FractionalMaxPoolGrad FresnelCos
    FresnelSin FusedBatchNorm FusedBatchNormGrad FusedBatchNormGradV2 FusedBatchNormGradV3
    FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D GRUBlockCell
    GRUBlockCellGrad Gather GatherNd GatherV2 GenerateBoundingBoxProposals Greater GreaterEqual
    HSVToRGB HistogramFixedWidth IFFT IFFT2D IFFT3D IFFTND IRFFT IRFFT2D IRFFT3D IRFFTND
    Identity IdentityN Igamma IgammaGradA Igammac Imag ImageProjectiveTransformV2
    ImageProjectiveTransformV3 InTopK InTopKV2 InplaceAdd InplaceSub InplaceUpdate Inv InvGrad
    Invert InvertPermutation IsFinite IsInf IsNan IsotonicRegression L2Loss LRN LRNGrad
    LSTMBlockCell LSTMBlockCellGrad LeakyRelu LeakyReluGrad LeftShift Less LessEqual Lgamma
    LinSpace ListDiff Log Log1p LogMatrixDeterminant LogSoftmax LogicalAnd LogicalNot LogicalOr
    LoopCond LowerBound Lu MatMul MatrixBandPart MatrixDeterminant MatrixDiag MatrixDiagPart
    MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixExponential MatrixInverse
    MatrixLogarithm MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 MatrixSolve MatrixSolveLs
    MatrixSquareRoot MatrixTriangularSolve Max MaxPool MaxPool3D MaxPool3DGrad MaxPool3DGradGrad
    MaxPoolGrad MaxPoolGradGrad MaxPoolGradGradV2 MaxPoolGradGradWithArgmax MaxPoolGradV2
    MaxPoolGradWithArgmax MaxPoolV2 MaxPoolWithArgmax Maximum Mean Merge Min Minimum MirrorPad
    MirrorPadGrad Mod Mul MulNoNan Ndtri Neg NextAfter NextIteration NoOp NonMaxSuppression
    NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4 NonMaxSuppressionV5
    NonMaxSuppressionWithOverlaps NotEqual NthElement OneHot OnesLike Pack Pad PadV2
    ParallelConcat PartitionedCall Placeholder PlaceholderV2 PlaceholderWithDefault Polygamma
    PopulationCount Pow PreventGradient Prod Qr QuantizeAndDequantize QuantizeAndDequantizeV2
    QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 QuantizeAndDequantizeV4Grad
    QuantizeDownAndShrinkRange QuantizeV2 QuantizedAdd QuantizedAvgPool
    QuantizedBatchNormWithGlobalNormalization QuantizedBiasAdd QuantizedConcat QuantizedConv2D
    QuantizedConv2DAndRelu QuantizedConv2DAndReluAndRequantize QuantizedConv2DAndRequantize
    QuantizedConv2DPerChannel QuantizedConv2DWithBias QuantizedConv2DWithBiasAndRelu
    QuantizedConv2DWithBiasAndReluAndRequantize QuantizedConv2DWithBiasAndRequantize
    QuantizedConv2DWithBiasSignedSumAndReluAndRequantize QuantizedConv2DWithBiasSumAndRelu
    QuantizedConv2DWithBiasSumAndReluAndRequantize QuantizedDepthwiseConv2D
    QuantizedDepthwiseConv2DWithBias QuantizedDepthwiseConv2DWithBiasAndRelu
    QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize QuantizedInstanceNorm QuantizedMatMul
    QuantizedMatMulWithBias QuantizedMatMulWithBiasAndDequantize QuantizedMatMulWithBiasAndRelu
    QuantizedMatMulWithBiasAndReluAndRequantize QuantizedMatMulWithBiasAndRequantize
    QuantizedMaxPool QuantizedMul QuantizedRelu QuantizedRelu6 QuantizedReluX QuantizedReshape
    QuantizedResizeBilinear RFFT RFFT2D RFFT3D RFFTND RGBToHSV RaggedBincount Range Rank Real
    RealDiv Reciprocal ReciprocalGrad RefEnter RefExit RefIdentity RefMerge RefNextIteration
    RefSelect RefSwitch Relu Relu6 Relu6Grad ReluGrad RequantizationRange
    RequantizationRangePerChannel Requantize RequantizePerChannel Reshape ResizeArea
    ResizeBicubic ResizeBicubicGrad ResizeBilinear ResizeBilinearGrad ResizeNearestNeighbor
    ResizeNearestNeighborGrad Reverse ReverseSequence ReverseV2 RightShift Rint Roll Round Rsqrt
    RsqrtGrad ScaleAndTranslate ScaleAndTranslateGrad ScatterNd ScatterNdNonAliasingAdd
    SegmentMax SegmentMaxV2 SegmentMean SegmentMin SegmentMinV2 SegmentProd SegmentProdV2
    SegmentSum SegmentSumV2 Select SelectV2 SelfAdjointEig SelfAdjointEigV2 Selu SeluGrad Shape
    ShapeN Sigmoid SigmoidGrad Sign Sin Sinh Size Slice Snapshot SobolSample Softmax
    SoftmaxCrossEntropyWithLogits Softplus SoftplusGrad Softsign SoftsignGrad SpaceToBatch
    SpaceToBatchND SpaceToDepth SparseBincount SparseMatMul SparseSegmentMean
    SparseSegmentMeanGrad SparseSegmentMeanGradV2 SparseSegmentMeanWithNumSegments
    SparseSegmentSqrtN SparseSegmentSqrtNGrad SparseSegmentSqrtNGradV2
    SparseSegmentSqrtNWithNumSegments SparseSegmentSum SparseSegmentSumGrad
    SparseSegmentSumGradV2 SparseSegmentSumWithNumSegments SparseSoftmaxCrossEntropyWithLogits
    Spence Split SplitV Sqrt SqrtGrad Square SquaredDifference Squeeze StatelessCase StatelessIf
    StatelessMultinomial StatelessParameterizedTruncatedNormal StatelessRandomBinomial
    StatelessRandomGammaV2 StatelessRandomGammaV3 StatelessRandomGetKeyCounter
    StatelessRandomGetKeyCounterAlg StatelessRandomNormal StatelessRandomNormalV2
    StatelessRandomPoisson StatelessRandomUniform StatelessRandomUniformFullInt
    StatelessRandomUniformFullIntV2 StatelessRandomUniformInt StatelessRandomUniformIntV2
    StatelessRandomUniformV2 StatelessSampleDistortedBoundingBox StatelessShuffle
    StatelessTruncatedNormal StatelessTruncatedNormalV2 StatelessWhile StopGradient StridedSlice
    StridedSliceAssign StridedSliceGrad Sub Sum Svd Switch Tan Tanh TanhGrad TensorListConcat
    TensorListConcatLists TensorListConcatV2 TensorListElementShape TensorListFromTensor
    TensorListGather TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack
    TensorListPushBackBatch TensorListReserve TensorListResize TensorListScatter
    TensorListScatterIntoExistingList TensorListScatterV2 TensorListSetItem TensorListSplit
    TensorListStack TensorScatterAdd TensorScatterMax TensorScatterMin TensorScatterSub
    TensorScatterUpdate TensorStridedSliceUpdate Tile TileGrad ToBool TopK TopKV2 Transpose
    TridiagonalMatMul TridiagonalSolve TruncateDiv TruncateMod Unique UniqueV2 UniqueWithCounts
    UniqueWithCountsV2 Unpack UnravelIndex UnsortedSegmentMax UnsortedSegmentMin
    UnsortedSegmentProd UnsortedSegmentSum UpperBound Where Xdivy Xlog1py Xlogy ZerosLike Zeta
    """
)

TF_STATEFUL_OPS = frozenset(
    # Calls and control flow: the functions they call are checked like any other.
    {"StatefulPartitionedCall", "If", "While", "Case"}
    # Variables, in memory (resource variables; TF1 reference variables).
    | {
        "VarHandleOp",
        "ReadVariableOp",
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "VarIsInitializedOp",
        "VariableShape",
        "DestroyResourceOp",
        "DisableCopyOnRead",
        "ResourceGather",
        "ResourceGatherNd",
        "ResourceStridedSliceAssign",
        "VariableV2",
        "Variable",
        "Assign",
        "AssignAdd",
        "AssignSub",
        "IsVariableInitialized",
    }
    # Random draws: the process's random state only.
    | {
        "RandomUniform",
        "RandomUniformInt",
        "RandomStandardNormal",
        "TruncatedNormal",
        "StatelessRandomGetAlg",
    }
    # Checks that stop the run, saying nothing anywhere else.
    | {"Assert", "CheckNumerics", "CheckNumericsV2"}
    # Recurrent layers (forward only) and TF1 loops' arrays.
    | {"CudnnRNN", "CudnnRNNV2", "CudnnRNNV3"}
    | {
        "TensorArrayV3",
        "TensorArrayReadV3",
        "TensorArrayWriteV3",
        "TensorArrayGatherV3",
        "TensorArrayScatterV3",
        "TensorArrayConcatV3",
        "TensorArraySplitV3",
        "TensorArraySizeV3",
        "TensorArrayCloseV3",
        "DynamicStitch",
        "ParallelDynamicStitch",
        "DynamicPartition",
    }
)

#: Run anywhere in a graph.
TF_PURE_OPS = TF_COMPUTE_OPS | TF_STATEFUL_OPS

#: Allowed only in functions that nothing but the saver's nodes calls (which the loader never
#: runs): what tf.train.Saver and TensorFlow 2's object-based saver write.
TF_SAVE_OPS = frozenset(
    {
        "SaveV2",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "ShardedFilespec",
        "StringJoin",
        "StaticRegexFullMatch",
    }
)
#: Allowed in the saver's functions only.
TF_RESTORE_OPS = frozenset({"RestoreV2"})

ONNX_OPS = _names(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BitCast BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor
    BlackmanWindow Cast CastLike CausalConvWithState Ceil Celu CenterCropPad Clip Col2Im
    Compress Concat ConcatFromSequence Constant ConstantOfShape Conv ConvInteger ConvTranspose
    Cos Cosh CumProd CumSum DFT DeformConv DepthToSpace DequantizeLinear Det Div Dropout
    DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
    GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If InstanceNormalization IsInf IsNaN LRN LSTM
    LayerNormalization LeakyRelu Less LessOrEqual LinearAttention Log LogSoftmax Loop
    LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean
    MeanVarianceNormalization MelWeightMatrix Min Mish Mod Mul Neg NegativeLogLikelihoodLoss
    NonMaxSuppression NonZero Not OneHot Optional OptionalGetElement OptionalHasElement Or PRelu
    Pad Pow QLinearConv QLinearMatMul QuantizeLinear RMSNormalization RNN Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare RegexFullMatch Relu Reshape Resize ReverseSequence RoiAlign
    RotaryEmbedding Round STFT Scan Scatter ScatterElements ScatterND Selu SequenceAt
    SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus
    Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze StringConcat StringNormalizer
    StringSplit Sub Sum SwiGLU Swish Tan Tanh TensorScatter TfIdfVectorizer ThresholdedRelu Tile
    TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor
    """
)

ONNX_ML_OPS = _names(
    """
    ArrayFeatureExtractor Binarizer CastMap CategoryMapper DictVectorizer FeatureVectorizer
    Imputer LabelEncoder LinearClassifier LinearRegressor Normalizer OneHotEncoder SVMClassifier
    SVMRegressor Scaler TreeEnsemble TreeEnsembleClassifier TreeEnsembleRegressor ZipMap
    """
)

#: Domain -> the ops run from it; "" and ai.onnx are the same default domain.
ONNX_DOMAINS = {"": ONNX_OPS, "ai.onnx": ONNX_OPS, "ai.onnx.ml": ONNX_ML_OPS}
