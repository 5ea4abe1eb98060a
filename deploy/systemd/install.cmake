# Run by `cmake --install` (component server): writes the systemd units with
# the prefix of this install, so `--prefix` is honoured.
set(XLM_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(XLM_ENV_FILE "${CMAKE_INSTALL_PREFIX}/etc/xlmserve/xlmserve.env")
if(DEFINED ENV{DESTDIR})
  set(dest "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}")
else()
  set(dest "${CMAKE_INSTALL_PREFIX}")
endif()
foreach(unit xlm-broker.service xlm-workers.service)
  configure_file("${XLM_SYSTEMD_SRC}/${unit}.in" "${dest}/lib/systemd/system/${unit}" @ONLY)
endforeach()
file(INSTALL "${XLM_SYSTEMD_SRC}/xlmserve.env" DESTINATION "${dest}/share/xlmserve")
message(STATUS "Installing: ${dest}/lib/systemd/system/xlm-broker.service, xlm-workers.service")
