import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_COMPLEX64: _ClassVar[DType]
    DTYPE_COMPLEX128: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]

class RngMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RNG_MODE_UNSPECIFIED: _ClassVar[RngMode]
    RNG_MODE_BY_NAME: _ClassVar[RngMode]
    RNG_MODE_SEQUENTIAL: _ClassVar[RngMode]

class FanLayout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAN_LAYOUT_UNSPECIFIED: _ClassVar[FanLayout]
    FAN_LAYOUT_CHANNELS_LAST: _ClassVar[FanLayout]
    FAN_LAYOUT_CHANNELS_FIRST: _ClassVar[FanLayout]

class FanMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAN_MODE_UNSPECIFIED: _ClassVar[FanMode]
    FAN_MODE_FAN_IN: _ClassVar[FanMode]
    FAN_MODE_FAN_OUT: _ClassVar[FanMode]
    FAN_MODE_FAN_AVG: _ClassVar[FanMode]
    FAN_MODE_FAN_GEO_AVG: _ClassVar[FanMode]

class Distribution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTRIBUTION_UNSPECIFIED: _ClassVar[Distribution]
    DISTRIBUTION_TRUNCATED_NORMAL: _ClassVar[Distribution]
    DISTRIBUTION_NORMAL: _ClassVar[Distribution]
    DISTRIBUTION_UNIFORM: _ClassVar[Distribution]

class Nonlinearity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NONLINEARITY_UNSPECIFIED: _ClassVar[Nonlinearity]
    NONLINEARITY_LINEAR: _ClassVar[Nonlinearity]
    NONLINEARITY_CONV1D: _ClassVar[Nonlinearity]
    NONLINEARITY_CONV2D: _ClassVar[Nonlinearity]
    NONLINEARITY_CONV3D: _ClassVar[Nonlinearity]
    NONLINEARITY_CONV_TRANSPOSE1D: _ClassVar[Nonlinearity]
    NONLINEARITY_CONV_TRANSPOSE2D: _ClassVar[Nonlinearity]
    NONLINEARITY_CONV_TRANSPOSE3D: _ClassVar[Nonlinearity]
    NONLINEARITY_SIGMOID: _ClassVar[Nonlinearity]
    NONLINEARITY_TANH: _ClassVar[Nonlinearity]
    NONLINEARITY_RELU: _ClassVar[Nonlinearity]
    NONLINEARITY_LEAKY_RELU: _ClassVar[Nonlinearity]
    NONLINEARITY_SELU: _ClassVar[Nonlinearity]

class ZeroReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZERO_REASON_UNSPECIFIED: _ClassVar[ZeroReason]
    ZERO_REASON_NON_FLOAT_DTYPE: _ClassVar[ZeroReason]
    ZERO_REASON_RANK_AT_MOST_1: _ClassVar[ZeroReason]

class DigestAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIGEST_ALGORITHM_UNSPECIFIED: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_SHA256: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_XXH3_128: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_NONE: _ClassVar[DigestAlgorithm]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_COMPLEX64: DType
DTYPE_COMPLEX128: DType
DTYPE_INT8: DType
DTYPE_INT16: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_UINT8: DType
DTYPE_UINT16: DType
DTYPE_UINT32: DType
DTYPE_UINT64: DType
DTYPE_BOOL: DType
RNG_MODE_UNSPECIFIED: RngMode
RNG_MODE_BY_NAME: RngMode
RNG_MODE_SEQUENTIAL: RngMode
FAN_LAYOUT_UNSPECIFIED: FanLayout
FAN_LAYOUT_CHANNELS_LAST: FanLayout
FAN_LAYOUT_CHANNELS_FIRST: FanLayout
FAN_MODE_UNSPECIFIED: FanMode
FAN_MODE_FAN_IN: FanMode
FAN_MODE_FAN_OUT: FanMode
FAN_MODE_FAN_AVG: FanMode
FAN_MODE_FAN_GEO_AVG: FanMode
DISTRIBUTION_UNSPECIFIED: Distribution
DISTRIBUTION_TRUNCATED_NORMAL: Distribution
DISTRIBUTION_NORMAL: Distribution
DISTRIBUTION_UNIFORM: Distribution
NONLINEARITY_UNSPECIFIED: Nonlinearity
NONLINEARITY_LINEAR: Nonlinearity
NONLINEARITY_CONV1D: Nonlinearity
NONLINEARITY_CONV2D: Nonlinearity
NONLINEARITY_CONV3D: Nonlinearity
NONLINEARITY_CONV_TRANSPOSE1D: Nonlinearity
NONLINEARITY_CONV_TRANSPOSE2D: Nonlinearity
NONLINEARITY_CONV_TRANSPOSE3D: Nonlinearity
NONLINEARITY_SIGMOID: Nonlinearity
NONLINEARITY_TANH: Nonlinearity
NONLINEARITY_RELU: Nonlinearity
NONLINEARITY_LEAKY_RELU: Nonlinearity
NONLINEARITY_SELU: Nonlinearity
ZERO_REASON_UNSPECIFIED: ZeroReason
ZERO_REASON_NON_FLOAT_DTYPE: ZeroReason
ZERO_REASON_RANK_AT_MOST_1: ZeroReason
DIGEST_ALGORITHM_UNSPECIFIED: DigestAlgorithm
DIGEST_ALGORITHM_SHA256: DigestAlgorithm
DIGEST_ALGORITHM_XXH3_128: DigestAlgorithm
DIGEST_ALGORITHM_NONE: DigestAlgorithm

class Range(_message.Message):
    __slots__ = ("start", "stop")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    start: int
    stop: int
    def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FanAxes(_message.Message):
    __slots__ = ("in_axes", "out_axes", "batch_axes", "layout")
    IN_AXES_FIELD_NUMBER: _ClassVar[int]
    OUT_AXES_FIELD_NUMBER: _ClassVar[int]
    BATCH_AXES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    in_axes: _containers.RepeatedScalarFieldContainer[int]
    out_axes: _containers.RepeatedScalarFieldContainer[int]
    batch_axes: _containers.RepeatedScalarFieldContainer[int]
    layout: FanLayout
    def __init__(self, in_axes: _Optional[_Iterable[int]] = ..., out_axes: _Optional[_Iterable[int]] = ..., batch_axes: _Optional[_Iterable[int]] = ..., layout: _Optional[_Union[FanLayout, str]] = ...) -> None: ...

class Zeros(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Ones(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Constant(_message.Message):
    __slots__ = ("value", "imag")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IMAG_FIELD_NUMBER: _ClassVar[int]
    value: float
    imag: float
    def __init__(self, value: _Optional[float] = ..., imag: _Optional[float] = ...) -> None: ...

class RandomNormal(_message.Message):
    __slots__ = ("stddev", "mean")
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    stddev: float
    mean: float
    def __init__(self, stddev: _Optional[float] = ..., mean: _Optional[float] = ...) -> None: ...

class RandomUniform(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class TruncatedNormal(_message.Message):
    __slots__ = ("stddev", "mean", "lower", "upper")
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    stddev: float
    mean: float
    lower: float
    upper: float
    def __init__(self, stddev: _Optional[float] = ..., mean: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class VarianceScaling(_message.Message):
    __slots__ = ("scale", "mode", "distribution")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    scale: float
    mode: FanMode
    distribution: Distribution
    def __init__(self, scale: _Optional[float] = ..., mode: _Optional[_Union[FanMode, str]] = ..., distribution: _Optional[_Union[Distribution, str]] = ...) -> None: ...

class GlorotUniform(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GlorotNormal(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class XavierUniform(_message.Message):
    __slots__ = ("gain",)
    GAIN_FIELD_NUMBER: _ClassVar[int]
    gain: float
    def __init__(self, gain: _Optional[float] = ...) -> None: ...

class XavierNormal(_message.Message):
    __slots__ = ("gain",)
    GAIN_FIELD_NUMBER: _ClassVar[int]
    gain: float
    def __init__(self, gain: _Optional[float] = ...) -> None: ...

class He(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeNormal(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeUniform(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LecunNormal(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LecunUniform(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Kaiming(_message.Message):
    __slots__ = ("a", "mode", "nonlinearity")
    A_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NONLINEARITY_FIELD_NUMBER: _ClassVar[int]
    a: float
    mode: FanMode
    nonlinearity: Nonlinearity
    def __init__(self, a: _Optional[float] = ..., mode: _Optional[_Union[FanMode, str]] = ..., nonlinearity: _Optional[_Union[Nonlinearity, str]] = ...) -> None: ...

class Orthogonal(_message.Message):
    __slots__ = ("scale", "column_axis")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_AXIS_FIELD_NUMBER: _ClassVar[int]
    scale: float
    column_axis: int
    def __init__(self, scale: _Optional[float] = ..., column_axis: _Optional[int] = ...) -> None: ...

class DeltaOrthogonal(_message.Message):
    __slots__ = ("scale", "column_axis")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_AXIS_FIELD_NUMBER: _ClassVar[int]
    scale: float
    column_axis: int
    def __init__(self, scale: _Optional[float] = ..., column_axis: _Optional[int] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("gain",)
    GAIN_FIELD_NUMBER: _ClassVar[int]
    gain: float
    def __init__(self, gain: _Optional[float] = ...) -> None: ...

class Dirac(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: int
    def __init__(self, groups: _Optional[int] = ...) -> None: ...

class Sparse(_message.Message):
    __slots__ = ("sparsity", "stddev")
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    sparsity: float
    stddev: float
    def __init__(self, sparsity: _Optional[float] = ..., stddev: _Optional[float] = ...) -> None: ...

class Broadcast(_message.Message):
    __slots__ = ("base",)
    BASE_FIELD_NUMBER: _ClassVar[int]
    base: Tensor
    def __init__(self, base: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Initializer(_message.Message):
    __slots__ = ("zeros", "ones", "constant", "random_normal", "random_uniform", "truncated_normal", "glorot_uniform", "glorot_normal", "xavier_uniform", "xavier_normal", "he", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "variance_scaling", "orthogonal", "identity", "broadcast", "kaiming_uniform", "kaiming_normal", "dirac", "delta_orthogonal", "sparse", "fan_axes")
    ZEROS_FIELD_NUMBER: _ClassVar[int]
    ONES_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_NORMAL_FIELD_NUMBER: _ClassVar[int]
    RANDOM_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_NORMAL_FIELD_NUMBER: _ClassVar[int]
    GLOROT_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    GLOROT_NORMAL_FIELD_NUMBER: _ClassVar[int]
    XAVIER_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    XAVIER_NORMAL_FIELD_NUMBER: _ClassVar[int]
    HE_FIELD_NUMBER: _ClassVar[int]
    HE_NORMAL_FIELD_NUMBER: _ClassVar[int]
    HE_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    LECUN_NORMAL_FIELD_NUMBER: _ClassVar[int]
    LECUN_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    VARIANCE_SCALING_FIELD_NUMBER: _ClassVar[int]
    ORTHOGONAL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    KAIMING_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    KAIMING_NORMAL_FIELD_NUMBER: _ClassVar[int]
    DIRAC_FIELD_NUMBER: _ClassVar[int]
    DELTA_ORTHOGONAL_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    FAN_AXES_FIELD_NUMBER: _ClassVar[int]
    zeros: Zeros
    ones: Ones
    constant: Constant
    random_normal: RandomNormal
    random_uniform: RandomUniform
    truncated_normal: TruncatedNormal
    glorot_uniform: GlorotUniform
    glorot_normal: GlorotNormal
    xavier_uniform: XavierUniform
    xavier_normal: XavierNormal
    he: He
    he_normal: HeNormal
    he_uniform: HeUniform
    lecun_normal: LecunNormal
    lecun_uniform: LecunUniform
    variance_scaling: VarianceScaling
    orthogonal: Orthogonal
    identity: Identity
    broadcast: Broadcast
    kaiming_uniform: Kaiming
    kaiming_normal: Kaiming
    dirac: Dirac
    delta_orthogonal: DeltaOrthogonal
    sparse: Sparse
    fan_axes: FanAxes
    def __init__(self, zeros: _Optional[_Union[Zeros, _Mapping]] = ..., ones: _Optional[_Union[Ones, _Mapping]] = ..., constant: _Optional[_Union[Constant, _Mapping]] = ..., random_normal: _Optional[_Union[RandomNormal, _Mapping]] = ..., random_uniform: _Optional[_Union[RandomUniform, _Mapping]] = ..., truncated_normal: _Optional[_Union[TruncatedNormal, _Mapping]] = ..., glorot_uniform: _Optional[_Union[GlorotUniform, _Mapping]] = ..., glorot_normal: _Optional[_Union[GlorotNormal, _Mapping]] = ..., xavier_uniform: _Optional[_Union[XavierUniform, _Mapping]] = ..., xavier_normal: _Optional[_Union[XavierNormal, _Mapping]] = ..., he: _Optional[_Union[He, _Mapping]] = ..., he_normal: _Optional[_Union[HeNormal, _Mapping]] = ..., he_uniform: _Optional[_Union[HeUniform, _Mapping]] = ..., lecun_normal: _Optional[_Union[LecunNormal, _Mapping]] = ..., lecun_uniform: _Optional[_Union[LecunUniform, _Mapping]] = ..., variance_scaling: _Optional[_Union[VarianceScaling, _Mapping]] = ..., orthogonal: _Optional[_Union[Orthogonal, _Mapping]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., broadcast: _Optional[_Union[Broadcast, _Mapping]] = ..., kaiming_uniform: _Optional[_Union[Kaiming, _Mapping]] = ..., kaiming_normal: _Optional[_Union[Kaiming, _Mapping]] = ..., dirac: _Optional[_Union[Dirac, _Mapping]] = ..., delta_orthogonal: _Optional[_Union[DeltaOrthogonal, _Mapping]] = ..., sparse: _Optional[_Union[Sparse, _Mapping]] = ..., fan_axes: _Optional[_Union[FanAxes, _Mapping]] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype", "initializer", "seed", "slice", "resume_offset", "sequence_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    initializer: Initializer
    seed: int
    slice: _containers.RepeatedCompositeFieldContainer[Range]
    resume_offset: int
    sequence_index: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., initializer: _Optional[_Union[Initializer, _Mapping]] = ..., seed: _Optional[int] = ..., slice: _Optional[_Iterable[_Union[Range, _Mapping]]] = ..., resume_offset: _Optional[int] = ..., sequence_index: _Optional[int] = ...) -> None: ...

class MaterializeRequest(_message.Message):
    __slots__ = ("session_id", "seed", "variables", "chunk_bytes", "sequence_start", "digest_algorithm")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_START_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    chunk_bytes: int
    sequence_start: int
    digest_algorithm: DigestAlgorithm
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ..., variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ..., chunk_bytes: _Optional[int] = ..., sequence_start: _Optional[int] = ..., digest_algorithm: _Optional[_Union[DigestAlgorithm, str]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype", "byte_size", "seed", "generator", "digest_algorithm", "slice", "zero_reason", "sequence_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    ZERO_REASON_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    byte_size: int
    seed: int
    generator: str
    digest_algorithm: str
    slice: _containers.RepeatedCompositeFieldContainer[Range]
    zero_reason: ZeroReason
    sequence_index: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., byte_size: _Optional[int] = ..., seed: _Optional[int] = ..., generator: _Optional[str] = ..., digest_algorithm: _Optional[str] = ..., slice: _Optional[_Iterable[_Union[Range, _Mapping]]] = ..., zero_reason: _Optional[_Union[ZeroReason, str]] = ..., sequence_index: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("variable_index", "offset", "data", "info", "last", "digest", "sequence_indexes")
    VARIABLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_INDEXES_FIELD_NUMBER: _ClassVar[int]
    variable_index: int
    offset: int
    data: bytes
    info: TensorInfo
    last: bool
    digest: bytes
    sequence_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, variable_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., info: _Optional[_Union[TensorInfo, _Mapping]] = ..., last: _Optional[bool] = ..., digest: _Optional[bytes] = ..., sequence_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("seed", "rng_mode", "default_initializer", "default_dtype", "ttl_seconds")
    SEED_FIELD_NUMBER: _ClassVar[int]
    RNG_MODE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    seed: int
    rng_mode: RngMode
    default_initializer: Initializer
    default_dtype: DType
    ttl_seconds: int
    def __init__(self, seed: _Optional[int] = ..., rng_mode: _Optional[_Union[RngMode, str]] = ..., default_initializer: _Optional[_Union[Initializer, _Mapping]] = ..., default_dtype: _Optional[_Union[DType, str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "seed", "rng_mode", "default_initializer", "default_dtype", "ttl_seconds", "expire_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RNG_MODE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    rng_mode: RngMode
    default_initializer: Initializer
    default_dtype: DType
    ttl_seconds: int
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ..., rng_mode: _Optional[_Union[RngMode, str]] = ..., default_initializer: _Optional[_Union[Initializer, _Mapping]] = ..., default_dtype: _Optional[_Union[DType, str]] = ..., ttl_seconds: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("sequence_length",)
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    sequence_length: int
    def __init__(self, sequence_length: _Optional[int] = ...) -> None: ...

class ListInitializersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "type", "default_value", "description", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_value: str
    description: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_value: _Optional[str] = ..., description: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class InitializerInfo(_message.Message):
    __slots__ = ("name", "json_name", "formula", "parameters", "random", "fan_based", "value_dtypes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSON_NAME_FIELD_NUMBER: _ClassVar[int]
    FORMULA_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    FAN_BASED_FIELD_NUMBER: _ClassVar[int]
    VALUE_DTYPES_FIELD_NUMBER: _ClassVar[int]
    name: str
    json_name: str
    formula: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    random: bool
    fan_based: bool
    value_dtypes: _containers.RepeatedScalarFieldContainer[DType]
    def __init__(self, name: _Optional[str] = ..., json_name: _Optional[str] = ..., formula: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ..., random: _Optional[bool] = ..., fan_based: _Optional[bool] = ..., value_dtypes: _Optional[_Iterable[_Union[DType, str]]] = ...) -> None: ...

class ListInitializersResponse(_message.Message):
    __slots__ = ("initializers", "dtypes", "generator")
    INITIALIZERS_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    initializers: _containers.RepeatedCompositeFieldContainer[InitializerInfo]
    dtypes: _containers.RepeatedScalarFieldContainer[DType]
    generator: str
    def __init__(self, initializers: _Optional[_Iterable[_Union[InitializerInfo, _Mapping]]] = ..., dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., generator: _Optional[str] = ...) -> None: ...
